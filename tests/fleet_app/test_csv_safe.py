"""fleet_app.csv_safe: the CSV writer for reports staff open in a spreadsheet."""

import csv
import io

import pytest

from fleet_app import csv_safe


def written(*cells) -> list[str]:
    out = io.StringIO()
    csv_safe.writer(out).writerow(cells)
    return next(csv.reader(io.StringIO(out.getvalue())))


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_it_neutralizes_each_formula_start(start):
    assert written(f"{start}1+1") == [f"'{start}1+1"]


def test_it_leaves_other_text_numbers_and_empty_cells_alone():
    assert written("ann@example.com", "a=b", "", -3, 2.5, True, None) == [
        "ann@example.com",
        "a=b",
        "",
        "-3",
        "2.5",
        "True",
        "",
    ]


def test_writerows_neutralizes_every_row():
    out = io.StringIO()
    csv_safe.writer(out, lineterminator="\n").writerows([["=a"], ["b"]])
    assert out.getvalue() == "'=a\nb\n"
