"""Verify a bundle and show the plan of its import; ``--apply`` carries it out.

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
from ...bundles.services import BundleRefused


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
    help = "Plan the import of a bundle (a folder or a .tar file); --apply to write it."
    # The checks load every URLconf and the whole API: a third of a small bundle's time,
    # for nothing the bundle uses.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("path")
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
        try:
            with named_lock("import_bundle"):
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
        if run.apply:
            self.stdout.write(f"applied: {run.written} rows and objects written")
        else:
            self.stdout.write("dry run: nothing was written; --apply to carry it out")
