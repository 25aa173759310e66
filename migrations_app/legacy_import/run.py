"""One import run: records fed to a service in batches, one transaction each (rolled back
on a dry run), and the report of what it did."""

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.management.base import CommandError
from django.db import connection, transaction

from .records import Record, record_error

# Rows per transaction: big enough for bulk statements, small enough to hold in memory.
BATCH_ROWS = 1000
# Refusals a caller of the service functions can read back (the command prints them all).
ERRORS_KEPT = 100
# Names of what was (or would be) created, per section, for a page that shows a plan.
EXAMPLES_KEPT = 50


@dataclass
class ImportReport:
    """What an import did (or would do, on a dry run): counts per section, and refusals,
    written one line each (``users.csv line 4: email is missing.``) as batches finish."""

    write: Callable[[str], None] | None = None
    read: int = 0
    refused: int = 0
    created: Counter = field(default_factory=Counter)
    unchanged: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    # The first refusals, for callers of the services; the command writes every one.
    errors: list[tuple[str, str]] = field(default_factory=list)
    # The first names of what was (or would be) created, per section.
    examples: dict[str, list[str]] = field(default_factory=dict)
    _pending: list[tuple[int, str, str]] = field(default_factory=list)

    def refuse(self, record: Record, message: str) -> None:
        """Refuse ``record``; its line is written when its batch is done, in line order."""
        self._pending.append((record.line, record.where, message))

    def example(self, section: str, name: str) -> None:
        kept = self.examples.setdefault(section, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(name)

    def flush(self) -> None:
        for _, where, message in sorted(self._pending, key=lambda item: item[0]):
            self.refused += 1
            if len(self.errors) < ERRORS_KEPT:
                self.errors.append((where, message))
            if self.write is not None:
                self.write(f"{where}: {message}")
        self._pending.clear()


# --- The run --------------------------------------------------------------------------------


# Legacy ids met so far in this import, per section: a repeated one is refused naming the
# line that gave it first. A temporary table, so a file of millions of rows costs the
# server's temp space, not this process's memory.
class LegacyImport:
    """One import run: ``with LegacyImport(apply=…, write=…) as run: run.feed(…)``.

    With ``apply`` each batch commits on its own; without, every batch happens inside one
    transaction rolled back when the run ends. With ``all_or_nothing`` an applied import
    also runs in one transaction, committed only if no row was refused.
    """

    def __init__(
        self,
        *,
        apply: bool,
        write: Callable[[str], None] | None = None,
        progress: Callable[[], None] | None = None,
        all_or_nothing: bool = False,
    ):
        self.apply, self.progress, self.all_or_nothing = apply, progress, all_or_nothing
        self.report = ImportReport(write=write)
        self._outer: transaction.Atomic | None = None

    def __enter__(self) -> "LegacyImport":
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS legacy_import_seen")
            cursor.execute(
                "CREATE TEMPORARY TABLE legacy_import_seen (section text NOT NULL, "
                "key text NOT NULL, place text NOT NULL, PRIMARY KEY (section, key))"
            )
        if not self.apply or self.all_or_nothing:
            self._outer = transaction.atomic()
            self._outer.__enter__()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if self._outer is not None:
                if not self.apply or self.report.refused or kind is not None:
                    transaction.set_rollback(True)
                self._outer.__exit__(kind, value, traceback)
        finally:
            if connection.connection is not None and not connection.needs_rollback:
                with connection.cursor() as cursor:
                    cursor.execute("DROP TABLE IF EXISTS legacy_import_seen")

    def feed(
        self,
        records: Iterator[Record],
        *,
        section: str,
        handle: Callable[[list[Record], ImportReport], None],
        key: str | None = None,
    ) -> None:
        """Hand ``records`` to ``handle`` a batch at a time. ``handle`` (a service) counts
        and refuses rows on the report, writing nothing of a row it refuses; ``key`` names
        the legacy id column, which must not repeat within the import."""
        batch: list[Record] = []
        for record in records:
            self.report.read += 1
            batch.append(record)
            if len(batch) >= BATCH_ROWS:
                self._batch(batch, section=section, handle=handle, key=key)
                batch = []
        if batch:
            self._batch(batch, section=section, handle=handle, key=key)

    def _batch(self, batch: list[Record], *, section: str, handle, key: str | None) -> None:
        report = self.report
        rows = []
        for record in batch:
            if record.fields is None:
                report.refuse(record, record.error)
            else:
                rows.append(record)
        with transaction.atomic():
            if key is not None:
                rows = self._unseen(rows, section=section, key=key)
            if rows:
                handle(rows, report)
        report.flush()
        if self.progress is not None:
            self.progress()

    def _unseen(self, rows: list[Record], *, section: str, key: str) -> list[Record]:
        """``rows`` without those whose ``key`` was given before in the import (refused)."""
        report = self.report
        firsts: dict[str, Record] = {}
        kept = []
        for row in rows:
            value = row.fields.get(key)
            value = str(value).strip() if isinstance(value, str | int) else ""
            if value in firsts:
                report.refuse(row, f"{key} {value!r} was already given on {firsts[value].where}.")
                continue
            if value:
                firsts[value] = row
            kept.append(row)
        if not firsts:
            return kept
        # Plain SQL both PostgreSQL and SQLite (the embedded default) run: one look-up and
        # one multi-row insert per batch (at most BATCH_ROWS keys).
        keys = list(firsts)
        marks = ", ".join(["%s"] * len(keys))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT key, place FROM legacy_import_seen "  # noqa: S608 - placeholders only
                f"WHERE section = %s AND key IN ({marks})",
                [section, *keys],
            )
            earlier = dict(cursor.fetchall())
            values = ", ".join(["(%s, %s, %s)"] * len(keys))
            cursor.execute(
                "INSERT INTO legacy_import_seen (section, key, place) "  # noqa: S608
                f"VALUES {values} ON CONFLICT DO NOTHING",
                [item for value in keys for item in (section, value, firsts[value].where)],
            )
        if not earlier:
            return kept
        for value, place in earlier.items():
            report.refuse(firsts[value], f"{key} {value!r} was already given on {place}.")
        refused = {id(firsts[value]) for value in earlier}
        return [row for row in kept if id(row) not in refused]

    def summary_error(self) -> CommandError | None:
        """The one-sentence failure a command raises when rows were refused, else None."""
        report = self.report
        if not report.refused:
            return None
        done = (
            "the others were imported"
            if self.apply and not self.all_or_nothing
            else "nothing was written"
        )
        return CommandError(
            f"{report.refused} of {report.read} row(s) were refused (listed above); {done}."
        )


def records_from(rows: Sequence[tuple[int, dict[str, Any]]] | Iterator) -> Iterator[Record]:
    """``Record`` for rows a caller built itself (``(line, fields)`` pairs), checked as a
    file's rows are."""
    for line, fields in rows:
        error = record_error(fields)
        yield Record(f"line {line}", line, None if error else fields, error or "")
