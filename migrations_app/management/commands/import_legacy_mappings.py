"""Import legacy credential mappings from an export of the legacy service.

Columns (CSV header or JSON keys): legacy_system_id, legacy_token (required), name,
organization (id, slug, or a name only one organization has), type, legacy_last_seen_at
(ISO 8601). Files: ``.csv``, ``.json`` (a list of mappings, or ``{"proxy_mappings": […]}``),
``.jsonl``/``.ndjson`` (one mapping per line); streamed, see ``migrations_app.legacy_import``.
Dry run by default; exits non-zero when any row was refused.
"""

from pathlib import Path

from django.core.management.base import CommandError

from fleet_app.errors import InvalidInput
from fleet_app.locks import LockHeld, named_lock
from fleet_app.management.base import CutoverCommand
from fleet_app.models import Organization
from fleet_app.progress import ProgressBar
from fleet_app.selectors import organization_resolve, organizations_visible_to

from ...cutover import services
from ...legacy_import import Export, LegacyImport

REQUIRED = ("legacy_system_id", "legacy_token")


class Command(CutoverCommand):
    help = "Import legacy credential mappings (CSV, JSON or JSON Lines). Dry run unless --apply."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--apply", action="store_true", help="Write the mappings.")
        parser.add_argument(
            "--organization",
            help="Organization (id, slug, or a name only one organization has) for rows "
            "without an organization column.",
        )
        parser.add_argument(
            "--born-registered",
            action="store_true",
            help="Create the native systems already registered (the rotation hands out "
            "their secret); otherwise they register on first rotation.",
        )

    def handle(
        self,
        *args,
        file: Path,
        apply: bool,
        organization: str | None,
        born_registered: bool,
        **options,
    ):
        # Organizations (given here or by the rows) are resolved within the caller's reach:
        # every one for the platform's shell, the subtree of an --actor.
        within = (
            organizations_visible_to(self.actor)
            if self.actor is not None
            else Organization.objects.all()
        )
        default_org = None
        if organization:
            try:
                default_org = organization_resolve(organization, within=within)
            except InvalidInput as error:
                raise CommandError(error.message) from None
        export = Export(file)
        if export.kind == "csv":
            missing = [c for c in REQUIRED if c not in export.header()]
            if missing:
                raise CommandError(f"The CSV header lacks {', '.join(missing)}.")
        key = "proxy_mappings"
        if export.kind == "json":
            is_array, lists, _ = export.json_lists()
            if not is_array and key not in lists:
                raise CommandError(
                    f"{file} must hold a JSON list of mappings (or {{{key!r}: [...]}})."
                )
        progress = ProgressBar(self.stderr, export.size, "bytes")
        run = LegacyImport(
            apply=apply,
            write=lambda line: self.stderr.write(self.style.ERROR(line)),
            progress=lambda: progress.show(export.position()),
        )
        try:
            with named_lock("import_legacy_mappings"), run:
                services.mappings_import_feed(
                    run,
                    export.records(key=key),
                    within=within,
                    default_organization=default_org,
                    born_registered=born_registered,
                    actor=self.actor,
                )
        except LockHeld:
            raise CommandError("Another import_legacy_mappings is running; try later.") from None
        progress.show(export.size)
        progress.close()
        report = run.report
        verb = "Imported" if apply else "Would import"
        self.stdout.write(
            f"{verb} {report.created['mappings']} mapping(s); "
            f"{report.unchanged['mappings']} already present; "
            f"{report.refused} row(s) refused; {report.read} read."
        )
        if not apply:
            self.stdout.write("Dry run: nothing was written. Re-run with --apply to import.")
        if failure := run.summary_error():
            raise failure
