"""Verify a bundle and show the plan of its import; ``--apply`` carries it out.

The bundle is a folder or a .tar file, or, with ``--from URL --token-file FILE``, pulled
from another instance over its staff API (``bundles.stream_pull``): only the chunks not
yet here are fetched, so the same command run again after an interruption resumes.

Everything is checked before the first write (signature by a trusted key, versions,
schema, every file's sha256 and size, sequence, base, digest key, free disk); any refusal
exits non-zero with the reason and the target as it was. An interrupted ``--apply`` of the
same bundle resumes after its last committed batch.
"""

import json

from django.core.management.base import CommandError

from fleet_app.locks import LockHeld, named_lock
from fleet_app.management.base import CutoverCommand

from ...bundles.importing import bundle_import_create, bundle_import_work, org_map_parse
from ...bundles.services import BundleRefused, size_parse
from ...bundles.stream_pull import bundle_pull_create, bundle_pull_work


def plan_text(plan: dict) -> str:
    lines = []
    for kind, counts in plan.get("kinds", {}).items():
        parts = ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if n)
        lines.append(f"  {kind}: {parts or 'nothing'}")
        for verdict, keys in plan.get("examples", {}).get(kind, {}).items():
            if keys and verdict != "unchanged":
                lines.append(f"    {verdict}: {', '.join(keys)}")
    blobs = plan.get("blobs", {})
    lines.append(
        f"  blobs: {blobs.get('to_place', 0)} to place of {blobs.get('in_bundle', 0)} "
        "in the bundle, "
        f"{blobs.get('bytes_needed', 0)} bytes needed, {blobs.get('bytes_free', 0)} free"
    )
    if plan.get("fresh_secrets"):
        lines.append("  the digest keys differ: imported systems will need fresh secrets")
    return "\n".join(lines)


class Command(CutoverCommand):
    help = (
        "Plan the import of a bundle (a folder, a .tar file, or pulled from another "
        "instance with --from); --apply to write it."
    )
    # The checks load every URLconf and the whole API: a third of a small bundle's time,
    # for nothing the bundle uses.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?")
        pull = parser.add_argument_group("pulling from another instance")
        pull.add_argument("--from", dest="remote", metavar="URL", help="The source's address.")
        pull.add_argument(
            "--token-file", metavar="FILE", help="A staff API token of the source, in a file."
        )
        pull.add_argument("--organization", action="append", default=[], metavar="SLUG")
        pull.add_argument("--selection", metavar="NAME", help="A saved selection on the source.")
        pull.add_argument("--kind", action="append", default=[], metavar="KIND")
        pull.add_argument("--since", metavar="EXPORT_ID|DATE", help="Incremental (the source's).")
        pull.add_argument("--chunk-size", metavar="SIZE", help="e.g. 64MB (the default).")
        pull.add_argument("--credentials", action="store_true", help="Carry credential digests.")
        parser.add_argument("--apply", action="store_true")
        parser.add_argument("--map-org", action="append", default=[], metavar="SRC=DST")
        parser.add_argument("--map-file", metavar="FILE", help="JSON object or SRC=DST lines.")
        parser.add_argument("--on-conflict", choices=("skip", "source", "fail"), default="skip")
        parser.add_argument(
            "--fresh-secrets",
            action="store_true",
            help="When the digest keys differ: import without digests, "
            "the systems marked for new secrets.",
        )
        parser.add_argument("--json", action="store_true", help="Print the plan as JSON.")

    def handle(self, *args, **options):
        pairs = list(options["map_org"])
        if options["map_file"]:
            try:
                text = open(options["map_file"]).read()  # noqa: SIM115
            except OSError as error:
                raise CommandError(f"{options['map_file']}: {error.strerror}.") from error
            if text.lstrip().startswith("{"):
                pairs += [f"{k}={v}" for k, v in json.loads(text).items()]
            else:
                pairs += [line.strip() for line in text.splitlines() if line.strip()]
        if bool(options["path"]) == bool(options["remote"]):
            raise CommandError("Give a bundle's PATH, or --from URL to pull one (not both).")
        try:
            with named_lock("import_bundle"):
                if options["remote"]:
                    run = bundle_pull_create(
                        actor=self.actor,
                        url=options["remote"],
                        token=self._token(options["token_file"]),
                        organizations=options["organization"],
                        selection=options["selection"],
                        kinds=options["kind"],
                        since=options["since"],
                        chunk_size=size_parse(options["chunk_size"]),
                        credentials=options["credentials"],
                        apply=options["apply"],
                        org_map=org_map_parse(pairs),
                        on_conflict=options["on_conflict"],
                        fresh_secrets=options["fresh_secrets"],
                    )
                    bundle_pull_work(run=run)
                else:
                    run = bundle_import_create(
                        actor=self.actor,
                        path=options["path"],
                        apply=options["apply"],
                        org_map=org_map_parse(pairs),
                        on_conflict=options["on_conflict"],
                        fresh_secrets=options["fresh_secrets"],
                    )
                    bundle_import_work(run=run)
        except LockHeld as error:
            raise CommandError("Another import is running; wait for it to finish.") from error
        except BundleRefused as error:
            raise CommandError(str(error)) from error
        run.refresh_from_db()
        if run.state != "succeeded":
            raise CommandError(f"Refused: {run.error}")
        if options["json"]:
            self.stdout.write(json.dumps(run.plan, indent=1))
        else:
            self.stdout.write(
                f"bundle {run.bundle_id} (sequence {run.sequence}, signed by {run.signer})"
            )
            self.stdout.write(plan_text(run.plan))
        if run.remote_url:
            self.stdout.write(f"pulled: {run.bytes_fetched} of {run.bytes_total} bytes here")
        if run.apply:
            self.stdout.write(f"applied: {run.written} rows and objects written")
        else:
            self.stdout.write("dry run: nothing was written; --apply to carry it out")

    @staticmethod
    def _token(path: str | None) -> str:
        if not path:
            raise CommandError("--from needs --token-file FILE: the source's staff API token.")
        try:
            with open(path) as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"{path}: the token file cannot be read.") from error
