"""Import the legacy platform's accounts: organizations, users (with their memberships),
non-default quota limits and resource usage. Dry run by default; ``--apply`` writes.

JSON: one object with any of the lists ``organizations``, ``users``, ``quotas``, ``usage``.
CSV or JSON Lines (``.jsonl``, one object per line): one file per section, recognized by
its header (the first object's keys) (several files may be given):

- organizations: legacy_id, name, kind (default customer), parent (legacy id; blank: --under)
- users: legacy_id, email, is_active, date_joined, last_login, full_name,
  memberships ("org:role;org:role", legacy organization ids), uuid (the legacy public
  identifier), email_verified, vms, networks, files (what the account owned)
- quotas: organization or user (legacy id), resource, limit (blank or the default: not kept)
- usage: organization or user (legacy id), resource, usage

Accounts whose e-mails collide case-insensitively are imported as the legacy platform had
them: the first active one stays active, later ones are imported inactive and flagged for
``manage.py dedupe_users`` (the legacy active flag is kept beside them).

Resources: systems, backup_bytes and the legacy platform's six (cyclades.vm, cyclades.cpu,
cyclades.ram, cyclades.disk, cyclades.network.private, pithos+.diskspace).

Files are streamed (``migrations_app.legacy_import``); a refused row is named by its file
and line, and the command exits non-zero when any row was refused. With ``--apply``,
nothing is written when a row was refused, unless ``--skip-bad-rows`` is given.
"""

from pathlib import Path

from django.core.management.base import CommandError

from fleet_app.errors import InvalidInput
from fleet_app.locks import LockHeld, named_lock
from fleet_app.management.base import CutoverCommand
from fleet_app.models import Organization
from fleet_app.progress import ProgressBar
from fleet_app.selectors import organization_resolve

from ...accounts import legacy_import as account_import
from ...legacy_import import Export, LegacyImport

# A CSV's section is the first whose telltale column its header has.
CSV_SECTIONS = (
    ("email", "users"),
    ("limit", "quotas"),
    ("usage", "usage"),
    ("name", "organizations"),
)


def file_sections(export: Export) -> list[str]:
    """The sections ``export`` holds; ``CommandError`` if it is not an accounts export."""
    path = export.path
    if export.kind == "json":
        is_array, lists, others = export.json_lists()
        if is_array:
            raise CommandError(
                f"{path} must hold a JSON object with lists named "
                f"{', '.join(account_import.IMPORT_SECTIONS)}."
            )
        unknown = sorted(set(lists + others) - set(account_import.IMPORT_SECTIONS))
        if unknown:
            raise CommandError(f"{path} has an unknown section {unknown[0]!r}.")
        if others:
            raise CommandError(f"{path}: {others[0]} must be a list.")
        return lists
    if export.kind == "csv":
        header = set(export.header())
    else:
        first = next(export.records(), None)
        header = set(first.fields or {}) if first is not None else set()
    section = next((name for column, name in CSV_SECTIONS if column in header), None)
    if section is None or ("legacy_id" not in header and section in ("users", "organizations")):
        raise CommandError(
            f"{path}: the header names no known section (users need legacy_id and email; "
            "organizations legacy_id and name; quotas resource and limit; usage resource "
            "and usage)."
        )
    return [section]


class Command(CutoverCommand):
    help = (
        "Import legacy accounts, organizations and quotas (JSON, JSON Lines or CSV). "
        "Dry run unless --apply."
    )

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
        parser.add_argument("--apply", action="store_true", help="Write the accounts.")
        parser.add_argument(
            "--skip-bad-rows",
            action="store_true",
            help="With --apply: import the good rows even if some are refused (by default a "
            "file with a refused row writes nothing).",
        )
        parser.add_argument(
            "--under",
            help="Organization (id, slug, or a name only one organization has) that legacy "
            "organizations without a parent go under; by default the one owner organization.",
        )

    def handle(self, *args, files: list[Path], apply: bool, under: str | None, **options):
        skip = options["skip_bad_rows"]
        if skip and not apply:
            raise CommandError("--skip-bad-rows only applies to --apply; a dry run writes nothing.")
        exports = [Export(path, name_in_where=True) for path in files]
        passes = [(section, export) for export in exports for section in file_sections(export)]
        passes.sort(key=lambda item: account_import.IMPORT_SECTIONS.index(item[0]))  # stable
        parent = _organization(under)
        total = sum(export.size for _, export in passes)
        progress = ProgressBar(self.stderr, total, "bytes")
        done = 0
        current: list[Export] = []
        run = LegacyImport(
            apply=apply,
            write=lambda line: self.stderr.write(self.style.ERROR(line)),
            progress=lambda: progress.show(done + current[0].position()),
            all_or_nothing=not skip,
        )
        try:
            with named_lock("import_legacy_accounts"), run:
                for section, export in passes:
                    current[:] = [export]
                    key = section if export.kind == "json" else None
                    account_import.accounts_import_feed(
                        run, section, export.records(key=key), under=parent
                    )
                    done += export.size
        except LockHeld:
            raise CommandError("Another import_legacy_accounts is running; try later.") from None
        progress.show(total)
        progress.close()
        report = run.report
        sections = {section for section, _ in passes}
        written = apply and (skip or not report.refused)
        verb = "Imported" if written else "Would import"
        parts = [
            f"{report.created[name]} {name}"
            for name in account_import.IMPORT_SECTIONS
            if name in sections
        ]
        self.stdout.write(
            f"{verb} {', '.join(parts) or 'nothing'}; "
            f"{sum(report.unchanged.values())} row(s) already present; "
            f"{report.notes['flagged']} account(s) flagged as case-insensitive duplicates; "
            f"{report.notes['defaults_skipped']} default limit(s) not kept; "
            f"{report.refused} row(s) refused; {report.read} read."
        )
        if report.notes["flagged"]:
            self.stdout.write("Review the flagged accounts with: manage.py dedupe_users")
        if report.refused and skip:
            self.stdout.write(f"Skipped {report.refused} refused row(s) (--skip-bad-rows).")
        if not apply:
            self.stdout.write("Dry run: nothing was written. Re-run with --apply to import.")
        elif not written:
            self.stdout.write(
                "Nothing was written: fix the refused rows, or re-run with --skip-bad-rows "
                "to import the others."
            )
        if failure := run.summary_error():
            raise failure


def _organization(ref: str | None) -> Organization | None:
    # Superusers only (the permission table): every organization is within reach.
    within = Organization.objects.all()
    if ref:
        try:
            return organization_resolve(ref, within=within)
        except InvalidInput as error:
            raise CommandError(error.message) from None
    owners = list(within.filter(kind=Organization.Kind.OWNER)[:2])
    return owners[0] if len(owners) == 1 else None
