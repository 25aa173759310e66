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

from .reader import FORMATS, Export
from .records import (
    BIGINT_MAX,
    FIELD_MAX_CHARS,
    JSON_DEPTH_MAX,
    RECORD_MAX_CHARS,
    Record,
    RowRefused,
    row_flag,
    row_stamp,
    row_text,
    row_whole,
)
from .run import BATCH_ROWS, ERRORS_KEPT, ImportReport, LegacyImport, records_from

__all__ = [
    "BATCH_ROWS",
    "BIGINT_MAX",
    "ERRORS_KEPT",
    "FIELD_MAX_CHARS",
    "FORMATS",
    "JSON_DEPTH_MAX",
    "RECORD_MAX_CHARS",
    "Export",
    "ImportReport",
    "LegacyImport",
    "Record",
    "RowRefused",
    "records_from",
    "row_flag",
    "row_stamp",
    "row_text",
    "row_whole",
]
