"""Streaming readers of export files (CSV, a JSON document, JSON lines): one record held
at a time, each named by the line where it starts."""

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from django.core.management.base import CommandError

from .records import (
    FIELD_MAX_CHARS,
    JSON_DEPTH_MAX,
    RECORD_MAX_CHARS,
    Record,
    csv_error,
    json_loads,
    record_error,
    text_error,
)

# --- Export files ---------------------------------------------------------------------------

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Characters read at a time from a JSON document.
CHUNK_CHARS = 1 << 16


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
            if error := text_error("a column name", name):
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
                    error = csv_error(header, row)
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
        fields, error = json_loads(source)
        if error is None:
            error = record_error(fields)
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
        chunk = self.text.read(CHUNK_CHARS)
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
