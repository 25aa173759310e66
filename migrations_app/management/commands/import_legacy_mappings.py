"""Import legacy credential mappings from a CSV or JSON export of the legacy service.

Columns (CSV header or JSON keys): legacy_system_id, legacy_token (required), name,
organization (id or name), type, legacy_last_seen_at (ISO 8601). Dry run by default.
"""

import csv
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fleet_app.locks import LockHeld, named_lock
from fleet_app.models import Organization
from fleet_app.progress import ProgressBar

from ... import services
from ..exports import export_read

REQUIRED = ("legacy_system_id", "legacy_token")


def read_rows(path: Path) -> tuple[list[tuple[int, dict]], str]:
    """``(number, row)`` pairs and what the number counts ("line" or "item")."""
    kind, content = export_read(path)
    if kind == "json":
        data = content
        if isinstance(data, dict) and isinstance(data.get("proxy_mappings"), list):
            data = data["proxy_mappings"]
        if not isinstance(data, list):
            raise CommandError(f"{path} must hold a JSON list of mappings.")
        return [(n, row if isinstance(row, dict) else {}) for n, row in enumerate(data, 1)], "item"
    text = content
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise CommandError(f"The CSV header lacks {', '.join(missing)}.")
    # Line numbers as an editor shows them: the header is line 1.
    return [(reader.line_num, row) for row in reader], "line"


class Command(BaseCommand):
    help = "Import legacy credential mappings (CSV or JSON). Dry run unless --apply."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--apply", action="store_true", help="Write the mappings.")
        parser.add_argument(
            "--organization",
            help="Organization (id or name) for rows without an organization column.",
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
        default_org = None
        if organization:
            default_org = (
                Organization.objects.filter(pk=organization).first()
                if organization.isdigit()
                else Organization.objects.filter(name=organization).first()
            )
            if default_org is None:
                raise CommandError(f"Organization {organization!r} does not exist.")
        rows, unit = read_rows(file)
        total = len(rows)
        progress = ProgressBar(self.stderr, total, "rows")
        try:
            with named_lock("import_legacy_mappings"):
                report = services.mappings_import(
                    rows=rows,
                    apply=apply,
                    default_organization=default_org,
                    born_registered=born_registered,
                    progress=progress.step,
                )
        except LockHeld:
            raise CommandError("Another import_legacy_mappings is running; try later.") from None
        progress.close()
        for number, message in report.errors:
            self.stderr.write(self.style.ERROR(f"{unit} {number}: {message}"))
        verb = "Imported" if apply else "Would import"
        self.stdout.write(
            f"{verb} {report.created} mapping(s); {report.unchanged} already present; "
            f"{len(report.errors)} row(s) refused; {total} read."
        )
        if not apply:
            self.stdout.write("Dry run: nothing was written. Re-run with --apply to import.")
