"""CSV for spreadsheets: a cell that a spreadsheet would read as a formula is written as text.

Excel, LibreOffice and Google Sheets evaluate a cell starting with ``=``, ``+``, ``-`` or
``@`` (and, after a leading tab or carriage return, whatever follows) as a formula; an
e-mail address such as ``=HYPERLINK("http://…")@example.com`` in an exported report would
run when staff open it. Such cells get a leading apostrophe, which spreadsheets show as
text and do not display (OWASP's "CSV injection" advice). Numbers, booleans and None are
written as they are: they are values the program wrote, never text a user chose.
"""

import csv
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralize(value: Any) -> Any:
    """The cell as written: a string that starts a formula gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class _Writer:
    def __init__(self, inner) -> None:
        self._inner = inner

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._inner.writerow([neutralize(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(stream, **fmtparams) -> _Writer:
    """``csv.writer`` whose every text cell is neutralized (see the module docstring)."""
    return _Writer(csv.writer(stream, **fmtparams))
