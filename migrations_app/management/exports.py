"""Reading a legacy export file (CSV or JSON) for the import commands."""

import json
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError


def export_read(path: Path) -> tuple[str, Any]:
    """``("json", data)`` or ``("csv", text)``; a sentence for whatever is wrong."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CommandError(f"{path} does not exist.") from None
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not UTF-8 text.") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return "json", json.loads(text)
        except ValueError as error:
            raise CommandError(f"{path} is not valid JSON: {error}.") from None
    if suffix == ".csv":
        return "csv", text
    raise CommandError(f"{path} must end in .csv or .json.")
