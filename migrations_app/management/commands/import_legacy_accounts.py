"""Import the legacy platform's accounts: organizations, users (with their memberships),
non-default quota limits and resource usage. Dry run by default; ``--apply`` writes.

JSON: one object with any of the lists ``organizations``, ``users``, ``quotas``, ``usage``.
CSV: one file per section, recognized by its header (several files may be given):

- organizations: legacy_id, name, kind (default customer), parent (legacy id; blank: --under)
- users: legacy_id, email, is_active, date_joined, last_login, full_name,
  memberships ("org:role;org:role", legacy organization ids)
- quotas: organization or user (legacy id), resource, limit (blank or the default: not kept)
- usage: organization or user (legacy id), resource, usage

Accounts whose e-mails collide case-insensitively are imported as the legacy platform had
them: the first active one stays active, later ones are imported inactive and flagged for
``manage.py dedupe_users`` (the legacy active flag is kept beside them).
"""

import csv
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fleet_app.locks import LockHeld, named_lock
from fleet_app.models import Organization
from fleet_app.progress import ProgressBar

from ... import accounts
from ..exports import export_read

# A CSV's section is the first whose telltale column its header has.
CSV_SECTIONS = (
    ("email", "users"),
    ("limit", "quotas"),
    ("usage", "usage"),
    ("name", "organizations"),
)


def read_sections(path: Path) -> dict[str, list[tuple[str, dict]]]:
    """``section → [(where, row)]`` from one JSON or CSV file."""
    kind, content = export_read(path)
    if kind == "json":
        data = content
        if not isinstance(data, dict):
            raise CommandError(
                f"{path} must hold a JSON object with lists named "
                f"{', '.join(accounts.IMPORT_SECTIONS)}."
            )
        unknown = sorted(set(data) - set(accounts.IMPORT_SECTIONS))
        if unknown:
            raise CommandError(f"{path} has an unknown section {unknown[0]!r}.")
        sections = {}
        for name, rows in data.items():
            if not isinstance(rows, list):
                raise CommandError(f"{path}: {name} must be a list.")
            sections[name] = [
                (f"{path.name} {name} item {n}", row) for n, row in enumerate(rows, 1)
            ]
        return sections
    text = content
    reader = csv.DictReader(text.splitlines())
    header = set(reader.fieldnames or [])
    section = next((name for column, name in CSV_SECTIONS if column in header), None)
    if section is None or ("legacy_id" not in header and section in ("users", "organizations")):
        raise CommandError(
            f"{path}: the header names no known section (users need legacy_id and email; "
            "organizations legacy_id and name; quotas resource and limit; usage resource "
            "and usage)."
        )
    # Line numbers as an editor shows them: the header is line 1.
    return {section: [(f"{path.name} line {reader.line_num}", row) for row in reader]}


class Command(BaseCommand):
    help = "Import legacy accounts, organizations and quotas (JSON or CSV). Dry run unless --apply."

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
        parser.add_argument("--apply", action="store_true", help="Write the accounts.")
        parser.add_argument(
            "--under",
            help="Organization (id or name) that legacy organizations without a parent go "
            "under; by default the one owner organization.",
        )

    def handle(self, *args, files: list[Path], apply: bool, under: str | None, **options):
        sections: dict[str, list] = {}
        for path in files:
            for name, rows in read_sections(path).items():
                sections.setdefault(name, []).extend(rows)
        parent = _organization(under)
        total = sum(len(rows) for rows in sections.values())
        progress = ProgressBar(self.stderr, total, "rows")
        try:
            with named_lock("import_legacy_accounts"):
                report = accounts.accounts_import(
                    sections=sections, apply=apply, under=parent, progress=progress.step
                )
        except LockHeld:
            raise CommandError("Another import_legacy_accounts is running; try later.") from None
        progress.close()
        for where, message in report.errors:
            self.stderr.write(self.style.ERROR(f"{where}: {message}"))
        verb = "Imported" if apply else "Would import"
        parts = [
            f"{report.created[name]} {name}"
            for name in accounts.IMPORT_SECTIONS
            if name in sections
        ]
        self.stdout.write(
            f"{verb} {', '.join(parts) or 'nothing'}; "
            f"{sum(report.unchanged.values())} row(s) already present; "
            f"{report.flagged} account(s) flagged as case-insensitive duplicates; "
            f"{report.defaults_skipped} default limit(s) not kept; "
            f"{len(report.errors)} row(s) refused; {total} read."
        )
        if report.flagged:
            self.stdout.write("Review the flagged accounts with: manage.py dedupe_users")
        if not apply:
            self.stdout.write("Dry run: nothing was written. Re-run with --apply to import.")


def _organization(ref: str | None) -> Organization | None:
    if ref:
        found = (
            Organization.objects.filter(pk=ref).first()
            if ref.isdigit()
            else Organization.objects.filter(name=ref).first()
        )
        if found is None:
            raise CommandError(f"Organization {ref!r} does not exist.")
        return found
    owners = list(Organization.objects.filter(kind=Organization.Kind.OWNER)[:2])
    return owners[0] if len(owners) == 1 else None
