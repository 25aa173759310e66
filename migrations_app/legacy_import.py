"""The legacy import engine both import commands use: streaming readers of export files,
the checks every row passes, the row error type, batches, and the report.

Formats, by the file's suffix:

- ``.csv``: a header line, then one record per row (quoted fields may hold newlines).
  Read with ``csv.reader`` over a text stream opened with ``newline=""``, so a quoted
  newline or a U+2028 inside a field does not shift later line numbers.
- ``.json``: a top-level array of records, or an object whose lists hold them
  (``{"proxy_mappings": […]}``, ``{"users": […], …}``). Scanned incrementally: one record
  is held at a time, never the document.
- ``.jsonl`` / ``.ndjson``: one JSON record per line.

Every record is named by the physical line where it starts (``line 12``; in a JSON
document also by its place in its list, ``line 1 (users item 3)``). A record that
breaks a bound (``FIELD_MAX_CHARS``, ``RECORD_MAX_CHARS``, ``JSON_DEPTH_MAX``), holds a NUL,
bytes that are not UTF-8 or a lone surrogate, has the wrong number of columns, or repeats
a legacy id given earlier in the import is refused with one sentence; the others go on.

Rows go to the service in batches of ``BATCH_ROWS``, each batch in one transaction. A dry
run does the same work inside one transaction it rolls back at the end, so it reports what
``--apply`` would do and writes nothing; neither holds more than a batch in memory.
"""

import csv
import datetime as dt
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from django.core.management.base import CommandError
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from fleet_app.errors import InvalidInput

# Bounds: a field, a record (a CSV line, a JSON item), how deep a JSON record may nest.
FIELD_MAX_CHARS = 4096
RECORD_MAX_CHARS = 1 << 20
JSON_DEPTH_MAX = 4
# Rows per transaction: big enough for bulk statements, small enough to hold in memory.
BATCH_ROWS = 1000
# The largest value a bigint column holds.
BIGINT_MAX = 2**63 - 1
# Refusals a caller of the service functions can read back (the command prints them all).
ERRORS_KEPT = 100
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}

_CHUNK_CHARS = 1 << 16
# A NUL, or a surrogate: a lone one sent escaped, or an undecodable byte (surrogateescape).
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


class RowRefused(InvalidInput):
    """A row the import refuses: nothing of it is written; the message is one sentence."""


@dataclass(slots=True)
class Record:
    """One record of an export file: where it starts, and its fields (None if refused)."""

    where: str
    line: int
    fields: dict[str, Any] | None
    error: str = ""


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
    _pending: list[tuple[int, str, str]] = field(default_factory=list)

    def refuse(self, record: Record, message: str) -> None:
        """Refuse ``record``; its line is written when its batch is done, in line order."""
        self._pending.append((record.line, record.where, message))

    def flush(self) -> None:
        for _, where, message in sorted(self._pending, key=lambda item: item[0]):
            self.refused += 1
            if len(self.errors) < ERRORS_KEPT:
                self.errors.append((where, message))
            if self.write is not None:
                self.write(f"{where}: {message}")
        self._pending.clear()


# --- Row cleaners ---------------------------------------------------------------------------


def row_text(row: dict[str, Any], key: str, limit: int, *, required: bool = False) -> str:
    """A text field, stripped; ``RowRefused`` if missing (when required) or too long."""
    value = row.get(key)
    if isinstance(value, dict | list):
        raise RowRefused(f"{key} must be text, not a JSON {type(value).__name__}.")
    value = "" if value is None else str(value).strip()
    if required and not value:
        raise RowRefused(f"{key} is missing.")
    if len(value) > limit:
        raise RowRefused(f"{key} is longer than {limit} characters.")
    return value


def row_flag(row: dict[str, Any], key: str, default: bool) -> bool:
    value = row.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "t", "yes", "y"):
        return True
    if text in ("0", "false", "f", "no", "n"):
        return False
    raise RowRefused(f"{key} {_shown(value)} is not true or false.")


def row_stamp(row: dict[str, Any], key: str) -> dt.datetime | None:
    """An ISO 8601 date or date-time (UTC when it names no zone), or None if blank."""
    raw = row_text(row, key, 64)
    if not raw:
        return None
    try:
        parsed = parse_datetime(raw)
        if parsed is None and (day := parse_date(raw)) is not None:
            parsed = dt.datetime.combine(day, dt.time())
    except ValueError:
        parsed = None
    if parsed is None:
        raise RowRefused(f"{key} {raw!r} is not an ISO 8601 date or date-time.")
    return timezone.make_aware(parsed, dt.UTC) if timezone.is_naive(parsed) else parsed


def row_whole(row: dict[str, Any], key: str, *, required: bool) -> int | None:
    """A whole number from 0 to the largest bigint, or None if blank and not required."""
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise RowRefused(f"{key} is missing.")
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()):
        raise RowRefused(f"{key} {_shown(value)} is not a whole number of 0 or more.")
    if len(text) > 19 or int(text) > BIGINT_MAX:
        raise RowRefused(f"{key} {_shown(value)} is larger than {BIGINT_MAX}.")
    return int(text)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}…"


# --- Checks every field passes --------------------------------------------------------------


def _name(key: str) -> str:
    return key if key.isidentifier() and len(key) <= 64 else _shown(key)


def _text_error(name: str, value: str) -> str | None:
    if len(value) > FIELD_MAX_CHARS:
        return f"{_name(name)} is longer than {FIELD_MAX_CHARS} characters."
    found = _BAD_CHAR.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return f"{_name(name)} holds a NUL character."
    return f"{_name(name)} is not valid UTF-8 (undecodable bytes or a lone surrogate)."


def _value_error(name: str, value: Any, depth: int) -> str | None:
    if depth > JSON_DEPTH_MAX:
        return f"{_name(name)} is nested deeper than {JSON_DEPTH_MAX} levels."
    if isinstance(value, str):
        return _text_error(name, value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{_name(name)} is not a finite number."
    if isinstance(value, list):
        for item in value:
            if error := _value_error(name, item, depth + 1):
                return error
    elif isinstance(value, dict):
        for key, item in value.items():
            if error := _text_error(name, key) or _value_error(name, item, depth + 1):
                return error
    return None


def _record_error(fields: Any) -> str | None:
    if not isinstance(fields, dict):
        if isinstance(fields, list) and _value_error("", fields, 1):
            return f"is nested deeper than {JSON_DEPTH_MAX} levels."
        return "is not an object of named fields."
    for key, value in fields.items():
        if error := _text_error("a field name", key) or _value_error(key, value, 2):
            return error
    return None


def _csv_error(header: Sequence[str], row: list[str]) -> str | None:
    if max(map(len, row)) > FIELD_MAX_CHARS or _BAD_CHAR.search("".join(row)):
        for name, value in zip(header, row, strict=False):
            if error := _text_error(name, value):
                return error
    if len(row) != len(header):
        return f"has {len(row)} fields where the header has {len(header)}."
    return None


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _json_loads(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text, parse_constant=_json_constant), None
    except json.JSONDecodeError as error:
        return None, f"is not valid JSON: {error.msg} (column {error.colno})."
    except RecursionError:
        return None, f"is nested deeper than {JSON_DEPTH_MAX} levels."
    except ValueError as error:  # a number of more than 4,300 digits, NaN, Infinity
        return None, f"is not valid JSON: {str(error).split(';')[0]}."


# --- Export files ---------------------------------------------------------------------------


class Export:
    """One legacy export file, read as a stream of ``Record``."""

    def __init__(self, path: Path, *, name_in_where: bool = False):
        self.path = path
        self.kind = FORMATS.get(path.suffix.lower())
        if not path.is_file():
            raise CommandError(f"{path} does not exist.")
        if self.kind is None:
            raise CommandError(f"{path} must end in {', '.join(FORMATS)}.")
        self.size = path.stat().st_size
        self.prefix = f"{path.name} " if name_in_where else ""
        self._raw: io.BufferedReader | None = None

    def position(self) -> int:
        """Bytes read so far of the pass under way (for a progress bar)."""
        if self._raw is None:
            return 0
        return self.size if self._raw.closed else self._raw.tell()

    def _open(self) -> TextIO:
        # The csv module's own cap, so a runaway quoted field is an error, not all memory.
        csv.field_size_limit(RECORD_MAX_CHARS)
        self._raw = open(self.path, "rb")  # noqa: SIM115 - closed with the text stream
        # surrogateescape: an undecodable byte becomes a lone surrogate the row checks refuse,
        # so one bad row does not stop the file.
        return io.TextIOWrapper(
            self._raw, encoding="utf-8-sig", errors="surrogateescape", newline=""
        )

    def _where(self, line: int) -> str:
        return f"{self.prefix}line {line}"

    def _invalid(self, what: str) -> CommandError:
        return CommandError(f"{self.path} is not valid {self.kind.upper()}: {what}")

    # CSV

    def header(self) -> list[str]:
        """The CSV header's column names (stripped); ``CommandError`` if there is none."""
        with self._open() as text:
            return self._header(csv.reader(_Lines(text)))

    def _header(self, reader) -> list[str]:
        try:
            header = next((row for row in reader if row), None)
        except csv.Error as error:
            raise self._invalid(f"{error}.") from None
        if header is None:
            raise CommandError(f"{self.path} is empty: it needs a header line.")
        header = [name.strip() for name in header]
        for name in header:
            if error := _text_error("a column name", name):
                raise CommandError(f"{self.path}: the header's {error}")
        return header

    def _csv_records(self) -> Iterator[Record]:
        with self._open() as text:
            lines = _Lines(text)
            reader = csv.reader(lines)
            header = self._header(reader)
            while True:
                start = lines.count + 1
                lines.overlong = False
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as error:
                    yield Record(self._where(start), start, None, f"is not valid CSV: {error}.")
                    continue
                if lines.overlong:
                    message = f"has a line longer than {RECORD_MAX_CHARS} characters."
                    yield Record(self._where(start), start, None, message)
                elif row:  # a blank line is no record
                    error = _csv_error(header, row)
                    fields = None if error else dict(zip(header, row, strict=True))
                    yield Record(self._where(start), start, fields, error or "")

    # JSON Lines

    def _jsonl_records(self) -> Iterator[Record]:
        with self._open() as text:
            lines = _Lines(text)
            for line in lines:
                number = lines.count
                if lines.overlong:
                    lines.overlong = False
                    message = f"is longer than {RECORD_MAX_CHARS} characters."
                    yield Record(self._where(number), number, None, message)
                    continue
                if not line.strip():
                    continue
                yield self._json_record(number, line)

    def _json_record(self, line: int, source: str) -> Record:
        fields, error = _json_loads(source)
        if error is None:
            error = _record_error(fields)
        return Record(self._where(line), line, None if error else fields, error or "")

    # JSON

    def json_lists(self) -> tuple[bool, list[str], list[str]]:
        """``(top-level is an array, keys holding lists, other keys)``, read in one pass
        without keeping any record; ``CommandError`` for a broken document."""
        with self._open() as text:
            scanner = _JsonScanner(text, self._invalid, keep=False)
            for _ in scanner.items(None):
                pass
        return scanner.top == "[", scanner.lists, scanner.others

    def records(self, *, key: str | None = None) -> Iterator[Record]:
        """The file's records; for a JSON object, those of the list named ``key``
        (a JSON array or a CSV or JSON Lines file has no key)."""
        if self.kind == "csv":
            yield from self._csv_records()
        elif self.kind == "jsonl":
            yield from self._jsonl_records()
        else:
            with self._open() as text:
                scanner = _JsonScanner(text, self._invalid, keep=True)
                for n, (line, source, error) in enumerate(scanner.items(key), 1):
                    # The item's place too: a minified export is all on line 1.
                    inside = f"{key} item" if scanner.top == "{" else "item"
                    where = f"{self._where(line)} ({inside} {n})"
                    if error:
                        yield Record(where, line, None, error)
                    else:
                        record = self._json_record(line, source)
                        record.where = where
                        yield record


class _Lines:
    """The physical lines of a text stream, for ``csv.reader``: counted, and cut at
    ``RECORD_MAX_CHARS`` (the rest of an overlong line is skipped, ``overlong`` set)."""

    def __init__(self, text: TextIO):
        self.text, self.count, self.overlong = text, 0, False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.text.readline(RECORD_MAX_CHARS)
        if not line:
            raise StopIteration
        self.count += 1
        if len(line) == RECORD_MAX_CHARS and not line.endswith(("\n", "\r")):
            self.overlong = True
            while (rest := self.text.readline(RECORD_MAX_CHARS)) and not rest.endswith(
                ("\n", "\r")
            ):
                pass
            return "\n"
        return line


_RECORD_TOKENS = re.compile(r'["\[\]{},]')
_STRING_TOKENS = re.compile(r'["\\]')
_NOT_SPACE = re.compile(r"\S")
_CLOSERS = {"]": "[", "}": "{"}


class _JsonScanner:
    """Finds the records of a JSON document (the items of a top-level array, or of the
    lists of a top-level object) without parsing them: brackets are counted outside
    strings, so a record's source and the line it starts on are known while at most one
    record (``RECORD_MAX_CHARS``) is held; nesting beyond ``JSON_DEPTH_MAX`` is counted,
    never recursed into. Each record's source is then parsed on its own."""

    def __init__(self, text: TextIO, invalid: Callable[[str], CommandError], *, keep: bool):
        self.text, self.invalid, self.keep_records = text, invalid, keep
        self.buf, self.off, self.pos = "", 0, 0  # buf[0] is absolute offset ``off``
        self.mark, self.line = 0, 1  # the line number at absolute offset ``mark``
        self.keep: int | None = None  # absolute offset from which buf must be kept
        self.top = ""
        self.lists: list[str] = []
        self.others: list[str] = []

    # Buffer

    def _fill(self) -> bool:
        chunk = self.text.read(_CHUNK_CHARS)
        if not chunk:
            return False
        keep = self.pos if self.keep is None else min(self.keep, self.pos)
        self._line_at(keep)
        self.buf = self.buf[keep - self.off :] + chunk
        self.off = keep
        return True

    def _line_at(self, position: int) -> int:
        if position > self.mark:
            self.line += self.buf.count("\n", self.mark - self.off, position - self.off)
            self.mark = position
        return self.line

    def _search(self, pattern: re.Pattern) -> re.Match | None:
        while True:
            found = pattern.search(self.buf, self.pos - self.off)
            if found is not None:
                return found
            self.pos = self.off + len(self.buf)
            if not self._fill():
                return None

    def _next_char(self) -> str | None:
        """The next character that is not white space (consumed), or None at the end."""
        found = self._search(_NOT_SPACE)
        if found is None:
            return None
        self.pos = self.off + found.end()
        return found.group()

    def _at_line(self) -> int:
        return self._line_at(self.pos)

    def _string(self, limit: int | None) -> None:
        """Skip a string whose opening quote was consumed."""
        start = self.pos
        while True:
            found = self._search(_STRING_TOKENS)
            if found is None:
                raise self.invalid(f"it ends inside a string begun on line {self._at_line()}.")
            at = self.off + found.start()
            if limit is not None and at - start > limit:
                raise self.invalid(f"a key on line {self._at_line()} is longer than {limit}.")
            if found.group() == '"':
                self.pos = at + 1
                return
            if at + 1 >= self.off + len(self.buf):  # a backslash at the end of the buffer
                self.pos = at
                if not self._fill():
                    raise self.invalid("it ends inside a string.")
                continue
            self.pos = at + 2

    # Structure

    def items(self, key: str | None) -> Iterator[tuple[int, str, str]]:
        """``(line, source, error)`` of each record of the list ``key`` (None: the
        top-level array); every list when ``key`` is None and the top is an object."""
        first = self._next_char()
        if first == "[":
            self.top = "["
            yield from self._array(wanted=True)
        elif first == "{":
            self.top = "{"
            yield from self._object(key)
        else:
            raise self.invalid("it must hold a list or an object.")
        if self._next_char() is not None:
            raise self.invalid(f"there is more after its end on line {self._at_line()}.")

    def _object(self, wanted: str | None) -> Iterator[tuple[int, str, str]]:
        char = self._next_char()
        if char == "}":
            return
        while True:
            if char != '"':
                raise self.invalid(f"a key is expected on line {self._at_line()}.")
            begin = self.keep = self.pos - 1
            self._string(limit=FIELD_MAX_CHARS)
            name = json.loads(self.buf[begin - self.off : self.pos - self.off])
            self.keep = None
            if self._next_char() != ":":
                raise self.invalid(f"a ':' is expected on line {self._at_line()}.")
            value_at = self._search(_NOT_SPACE)
            if value_at is not None and value_at.group() == "[":
                self.pos = self.off + value_at.end()
                self.lists.append(name)
                yield from self._array(wanted=wanted is None or name == wanted)
                char = self._next_char()
            else:
                self.others.append(name)
                _, _, _, char, _ = self._record(closer="}", keep=False)
            if char == "}":
                return
            if char != ",":
                raise self.invalid(f"a ',' or '}}' is expected on line {self._at_line()}.")
            char = self._next_char()

    def _array(self, *, wanted: bool) -> Iterator[tuple[int, str, str]]:
        count = 0
        while True:
            line, source, error, closer, empty = self._record(
                closer="]", keep=wanted and self.keep_records
            )
            if closer is None:
                raise self.invalid("it ends before its list is closed.")
            if empty:
                if closer == "]" and count == 0:
                    return  # an empty list
                error = "is empty (two commas in a row, or one before ']')."
            count += 1
            if wanted:
                yield line, source, error
            if closer == "]":
                return

    def _record(self, *, closer: str, keep: bool) -> tuple[int, str, str, str | None, bool]:
        """Scan one value up to the ',' or ``closer`` that ends it (consumed): ``(line,
        source (if kept), error, the character that ended it, whether it was empty)``."""
        found = self._search(_NOT_SPACE)
        if found is None:
            return self._at_line(), "", "", None, False
        self.pos = start = self.off + found.start()
        line = self._at_line()
        self.keep = start if keep else None
        stack: list[str] = []
        depth, error = 0, ""
        try:
            while True:
                found = self._search(_RECORD_TOKENS)
                if found is None:
                    return line, "", error, None, False
                at = self.off + found.start()
                self.pos = at + 1
                if self.keep is not None and at - start > RECORD_MAX_CHARS:
                    error = error or f"is longer than {RECORD_MAX_CHARS} characters."
                    self.keep = None
                char = found.group()
                if char == '"':
                    self._string(limit=None)
                elif char in "[{":
                    depth += 1
                    if depth <= JSON_DEPTH_MAX:
                        stack.append(char)
                    else:
                        error = error or f"is nested deeper than {JSON_DEPTH_MAX} levels."
                        self.keep = None
                elif depth == 0 and char in (",", closer):
                    kept = self.keep is not None
                    source = self.buf[start - self.off : at - self.off] if kept else ""
                    return line, source, error, char, at == start
                elif char in _CLOSERS:
                    if depth == 0 or (depth <= JSON_DEPTH_MAX and stack.pop() != _CLOSERS[char]):
                        raise self.invalid(
                            f"'{char}' on line {self._at_line()} closes nothing it opened."
                        )
                    depth -= 1
        finally:
            self.keep = None


# --- The run --------------------------------------------------------------------------------


# Legacy ids met so far in this import, per section: a repeated one is refused naming the
# line that gave it first. A temporary table, so a file of millions of rows costs the
# server's temp space, not this process's memory.
class LegacyImport:
    """One import run: ``with LegacyImport(apply=…, write=…) as run: run.feed(…)``.

    With ``apply`` each batch commits on its own; without, every batch happens inside one
    transaction rolled back when the run ends.
    """

    def __init__(
        self,
        *,
        apply: bool,
        write: Callable[[str], None] | None = None,
        progress: Callable[[], None] | None = None,
    ):
        self.apply, self.progress = apply, progress
        self.report = ImportReport(write=write)
        self._outer: transaction.Atomic | None = None

    def __enter__(self) -> "LegacyImport":
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS legacy_import_seen")
            cursor.execute(
                "CREATE TEMPORARY TABLE legacy_import_seen (section text NOT NULL, "
                "key text NOT NULL, place text NOT NULL, PRIMARY KEY (section, key))"
            )
        if not self.apply:
            self._outer = transaction.atomic()
            self._outer.__enter__()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if self._outer is not None:
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
        done = "the others were imported" if self.apply else "nothing was written"
        return CommandError(
            f"{report.refused} of {report.read} row(s) were refused (listed above); {done}."
        )


def records_from(rows: Sequence[tuple[int, dict[str, Any]]] | Iterator) -> Iterator[Record]:
    """``Record`` for rows a caller built itself (``(line, fields)`` pairs), checked as a
    file's rows are."""
    for line, fields in rows:
        error = _record_error(fields)
        yield Record(f"line {line}", line, None if error else fields, error or "")
