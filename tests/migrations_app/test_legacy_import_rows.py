"""The legacy import engine: every malformed row is refused as ``line N: <sentence>``
with the physical line it starts on, the rows around it still count, and the command
exits non-zero; a duplicate legacy id names both lines."""

import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from migrations_app.legacy_import import FIELD_MAX_CHARS, JSON_DEPTH_MAX, RECORD_MAX_CHARS
from migrations_app.models import LegacyMapping

PROGRESS = re.compile(r"^\d+/\d+ bytes$")
HEADER = b"legacy_system_id,legacy_token,name\n"


def refused(path, *args, apply: bool = True) -> tuple[str, list[str], str]:
    """stdout, the refusal lines and the failure of a run that must refuse rows."""
    out, err = StringIO(), StringIO()
    options = ["--apply"] if apply else []
    with pytest.raises(CommandError) as failure:
        call_command("import_legacy_mappings", str(path), *options, *args, stdout=out, stderr=err)
    lines = [line for line in err.getvalue().splitlines() if not PROGRESS.match(line)]
    return out.getvalue(), lines, str(failure.value)


@pytest.fixture
def write(tmp_path, customer):
    def write(name: str, content: bytes):
        path = tmp_path / name
        path.write_bytes(content)
        return path, "--organization", customer.slug

    return write


def imported() -> set[str]:
    return set(LegacyMapping.objects.values_list("legacy_system_id", flat=True))


def test_every_malformed_csv_row_is_named_by_the_line_it_starts_on(write):
    path, *org = write(
        "m.csv",
        HEADER
        + b"A,t,first\n"  # 2
        + b'B,t,"two\nlines"\n'  # 3-4: a quoted newline
        + "C,t,sep\u2028arated\n".encode()  # 5: U+2028 is no line break
        + b"D,t,"
        + b"x" * (128 * 1024)
        + b"\n"  # 6: a 128 KiB field
        + b"E,t,nul\x00here\n"  # 7
        + b"F,t,bad \xff\xfe bytes\n"  # 8: not UTF-8
        + b"G,t,\xed\xa0\x80\n"  # 9: a lone surrogate, UTF-8-encoded
        + b"H,t\n"  # 10: short
        + b"I,t,name,extra\n"  # 11: long
        + b"A,t2,again\n"  # 12: a duplicate of line 2
        + b"J,t,last\n",  # 13
    )

    out, lines, failure = refused(path, *org)

    assert lines == [
        f"line 6: name is longer than {FIELD_MAX_CHARS} characters.",
        "line 7: name holds a NUL character.",
        "line 8: name is not valid UTF-8 (undecodable bytes or a lone surrogate).",
        "line 9: name is not valid UTF-8 (undecodable bytes or a lone surrogate).",
        "line 10: has 2 fields where the header has 3.",
        "line 11: has 4 fields where the header has 3.",
        "line 12: legacy_system_id 'A' was already given on line 2.",
    ]
    assert "Imported 4 mapping(s); 0 already present; 7 row(s) refused; 11 read." in out
    assert failure == "7 of 11 row(s) were refused (listed above); the others were imported."
    assert imported() == {"A", "B", "C", "J"}
    assert LegacyMapping.objects.get(legacy_system_id="B").system.name == "two\nlines"


def test_a_dry_run_refuses_the_same_rows_and_fails_too(write):
    path, *org = write("m.csv", HEADER + b"A,t,x\nB,t\nA,t,y\n")

    out, lines, failure = refused(path, *org, apply=False)

    assert lines == [
        "line 3: has 2 fields where the header has 3.",
        "line 4: legacy_system_id 'A' was already given on line 2.",
    ]
    assert "Would import 1 mapping(s)" in out
    assert failure == "2 of 3 row(s) were refused (listed above); nothing was written."
    assert not LegacyMapping.objects.exists()


def test_a_duplicate_is_found_across_batches(write, settings, monkeypatch):
    monkeypatch.setattr("migrations_app.legacy_import.run.BATCH_ROWS", 2)
    rows = b"".join(b"L-%d,t,x\n" % n for n in range(5)) + b"L-1,t,x\n"
    path, *org = write("m.csv", HEADER + rows)

    _, lines, _ = refused(path, *org)

    assert lines == ["line 7: legacy_system_id 'L-1' was already given on line 3."]
    assert len(imported()) == 5


def test_an_overlong_line_is_refused_without_being_held(write):
    path, *org = write("m.csv", HEADER + b"A,t," + b"y" * (RECORD_MAX_CHARS + 10) + b"\nB,t,z\n")

    _, lines, _ = refused(path, *org)

    assert lines == [f"line 2: has a line longer than {RECORD_MAX_CHARS} characters."]
    assert imported() == {"B"}


def test_every_malformed_json_item_is_named_by_its_line(write):
    deep = "[" * 5000 + "]" * 5000
    items = [
        '{"legacy_system_id": "A", "legacy_token": "t"}',  # line 2
        '{"legacy_system_id": "B", "legacy_token": "t", "name": "sep\u2028arated"}',  # 3
        '{"legacy_system_id": "C", "legacy_token": "t", "name": "nul\\u0000"}',  # 4
        '{"legacy_system_id": "D", "legacy_token": "t", "name": "\\ud800"}',  # 5
        f'{{"legacy_system_id": "E", "legacy_token": "t", "x": {deep}}}',  # 6
        '{"legacy_system_id": "F", "legacy_token": "t", "name": "%s"}' % ("x" * 5000),  # 7
        '"not a row"',  # 8
        '{"legacy_system_id": "G", "legacy_token": NaN}',  # 9
        '{"legacy_system_id": "A",\n "legacy_token": "t"}',  # 10-11: a duplicate of line 2
        '{"legacy_system_id": "H", "legacy_token": "t"}',  # 12
    ]
    path, *org = write("m.json", ("[\n" + ",\n".join(items) + "\n]\n").encode())

    out, lines, _ = refused(path, *org)

    assert lines == [
        "line 4 (item 3): name holds a NUL character.",
        "line 5 (item 4): name is not valid UTF-8 (undecodable bytes or a lone surrogate).",
        f"line 6 (item 5): is nested deeper than {JSON_DEPTH_MAX} levels.",
        f"line 7 (item 6): name is longer than {FIELD_MAX_CHARS} characters.",
        "line 8 (item 7): is not an object of named fields.",
        "line 9 (item 8): is not valid JSON: NaN is not a JSON number.",
        "line 10 (item 9): legacy_system_id 'A' was already given on line 2 (item 1).",
    ]
    assert "Imported 3 mapping(s)" in out
    assert imported() == {"A", "B", "H"}


def test_json_lines_rows_are_checked_as_the_others(write):
    content = "\n".join(
        [
            json.dumps({"legacy_system_id": "A", "legacy_token": "t"}),
            "{broken",
            "[" * 3000 + "]" * 3000,
            json.dumps({"legacy_system_id": "B", "legacy_token": "t", "name": {"a": {"b": [[1]]}}}),
            json.dumps({"legacy_system_id": "C", "legacy_token": "t"}),
        ]
    )
    path, *org = write("m.jsonl", content.encode() + b"\xff\n")

    _, lines, _ = refused(path, *org)

    assert lines == [
        "line 2: is not valid JSON: Expecting property name enclosed in double quotes (column 2).",
        f"line 3: is nested deeper than {JSON_DEPTH_MAX} levels.",
        f"line 4: name is nested deeper than {JSON_DEPTH_MAX} levels.",
        "line 5: is not valid JSON: Extra data (column 47).",
    ]
    assert imported() == {"A"}


def test_an_out_of_range_number_is_refused(tmp_path, owner):
    (tmp_path / "orgs.csv").write_text("legacy_id,name\no1,Acme\n")
    (tmp_path / "quotas.csv").write_text(
        "organization,user,resource,limit\n"
        "o1,,systems,7\n"  # 2: good
        "o1,,systems,1.5\n"  # 3
        "o1,,systems,99999999999999999999\n"  # 4
        "o1,,systems,\u0663\n"  # 5: an Arabic-Indic digit
        "o1,,systems,-1\n"  # 6
    )
    err = StringIO()

    with pytest.raises(CommandError, match="^4 of 6 row"):
        call_command(
            "import_legacy_accounts",
            str(tmp_path / "orgs.csv"),
            str(tmp_path / "quotas.csv"),
            "--apply",
            stdout=StringIO(),
            stderr=err,
        )

    assert [line for line in err.getvalue().splitlines() if not PROGRESS.match(line)] == [
        "quotas.csv line 3: limit '1.5' is not a whole number of 0 or more.",
        f"quotas.csv line 4: limit '99999999999999999999' is larger than {2**63 - 1}.",
        "quotas.csv line 5: limit '\u0663' is not a whole number of 0 or more.",
        "quotas.csv line 6: limit '-1' is not a whole number of 0 or more.",
    ]


def test_a_duplicate_legacy_id_in_accounts_names_both_files(tmp_path, owner):
    (tmp_path / "a.csv").write_text("legacy_id,name\no1,Acme\n")
    (tmp_path / "b.json").write_text(
        json.dumps({"organizations": [{"legacy_id": "o2", "name": "B"}, {"legacy_id": "o1",
                                                                         "name": "C"}]})
    )  # fmt: skip
    err = StringIO()

    with pytest.raises(CommandError, match="^1 of 3 row"):
        call_command(
            "import_legacy_accounts",
            str(tmp_path / "a.csv"),
            str(tmp_path / "b.json"),
            stdout=StringIO(),
            stderr=err,
        )

    assert (
        "b.json line 1 (organizations item 2): legacy_id 'o1' was already given on "
        "a.csv line 2." in err.getvalue()
    )
