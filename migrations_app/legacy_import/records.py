"""Import records: what a row of an export file is, the checks every field passes,
the row error type and the cleaners services use on a row's fields."""

import datetime as dt
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from fleet_app.errors import InvalidInput

# Bounds: a field, a record (a CSV line, a JSON item), how deep a JSON record may nest.
FIELD_MAX_CHARS = 4096
RECORD_MAX_CHARS = 1 << 20
JSON_DEPTH_MAX = 4
# The largest value a bigint column holds.
BIGINT_MAX = 2**63 - 1
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


def text_error(name: str, value: str) -> str | None:
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
        return text_error(name, value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{_name(name)} is not a finite number."
    if isinstance(value, list):
        for item in value:
            if error := _value_error(name, item, depth + 1):
                return error
    elif isinstance(value, dict):
        for key, item in value.items():
            if error := text_error(name, key) or _value_error(name, item, depth + 1):
                return error
    return None


def record_error(fields: Any) -> str | None:
    if not isinstance(fields, dict):
        if isinstance(fields, list) and _value_error("", fields, 1):
            return f"is nested deeper than {JSON_DEPTH_MAX} levels."
        return "is not an object of named fields."
    for key, value in fields.items():
        if error := text_error("a field name", key) or _value_error(key, value, 2):
            return error
    return None


def csv_error(header: Sequence[str], row: list[str]) -> str | None:
    if max(map(len, row)) > FIELD_MAX_CHARS or _BAD_CHAR.search("".join(row)):
        for name, value in zip(header, row, strict=False):
            if error := text_error(name, value):
                return error
    if len(row) != len(header):
        return f"has {len(row)} fields where the header has {len(header)}."
    return None


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def json_loads(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text, parse_constant=_json_constant), None
    except json.JSONDecodeError as error:
        return None, f"is not valid JSON: {error.msg} (column {error.colno})."
    except RecursionError:
        return None, f"is nested deeper than {JSON_DEPTH_MAX} levels."
    except ValueError as error:  # a number of more than 4,300 digits, NaN, Infinity
        return None, f"is not valid JSON: {str(error).split(';')[0]}."
