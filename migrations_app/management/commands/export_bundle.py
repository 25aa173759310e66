"""Export a selection of the fleet's data as a signed bundle (a folder, or a chunked tar).

``--organization`` (repeatable) names the subtrees, or ``--selection`` a saved selection;
``--kind`` (repeatable) narrows what goes. ``--since`` makes it incremental: since an
export id of the same selection, or since a date (the last export made on or before it).
``--credentials`` carries credential digests and needs its own permission. The platform's
infrastructure (``--kind service_backups``, ``--kind replication_jobs``) goes only when named,
and only from the platform or a superuser; it needs no organization.
"""

from django.core.management.base import CommandError

from fleet_app.locks import LockHeld, named_lock
from fleet_app.management.base import CutoverCommand

from ...bundles.format import BundleError
from ...bundles.services import BundleRefused, bundle_export_create, bundle_export_work, size_parse


class Command(CutoverCommand):
    help = "Export a selection of organizations as a signed bundle."
    # The checks load every URLconf and the whole API: a third of a small bundle's time,
    # for nothing the bundle uses.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("--output", metavar="PATH", default="", help="An empty or new folder.")
        parser.add_argument("--organization", action="append", default=[], metavar="SLUG")
        parser.add_argument("--selection", metavar="NAME")
        parser.add_argument("--kind", action="append", default=[], metavar="KIND")
        parser.add_argument("--since", metavar="EXPORT_ID|DATE")
        parser.add_argument("--format", choices=("dir", "tar"), default="dir")
        parser.add_argument("--chunk-size", metavar="SIZE", help="e.g. 4GB (tar only).")
        parser.add_argument("--compress", action="store_true", help="zstd the row sections.")
        parser.add_argument("--credentials", action="store_true")
        parser.add_argument("--inventories", choices=("latest", "full"), default="latest")

    def handle(self, *args, **options):
        try:
            with named_lock("export_bundle"):
                run = bundle_export_create(
                    actor=self.actor,
                    organizations=options["organization"],
                    selection=options["selection"],
                    kinds=options["kind"],
                    since=options["since"],
                    fmt=options["format"],
                    chunk_size=size_parse(options["chunk_size"]),
                    compress=options["compress"],
                    credentials=options["credentials"],
                    inventories=options["inventories"],
                    output=options["output"],
                )
                bundle_export_work(run=run)
        except LockHeld as error:
            raise CommandError("Another export is running; wait for it to finish.") from error
        except (BundleRefused, BundleError) as error:
            raise CommandError(str(error)) from error
        run.refresh_from_db()
        if run.state != "succeeded":
            raise CommandError(run.error or "The export failed.")
        self.stdout.write(
            f"export {run.pk} (sequence {run.sequence}): {run.rows} rows, {run.bytes} bytes "
            f"in {run.output}\nmanifest sha256 {run.manifest_sha256}"
        )
