"""manage.py import_legacy_mappings: dry run, apply, idempotent, bad rows named, a
non-zero exit when any row was refused, --organization by id, slug or a unique name."""

import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from fleet_app import credentials, services
from fleet_app.models import AuditEntry, System
from migrations_app.models import CutoverDay, LegacyMapping

PROGRESS = re.compile(r"^\d+/\d+ bytes$")
HEADER = "legacy_system_id,legacy_token,name,organization,type,legacy_last_seen_at\n"


def run(path, *args, refused: int = 0):
    """stdout and stderr; with ``refused``, the command must fail naming that many rows."""
    out, err = StringIO(), StringIO()
    if refused:
        with pytest.raises(CommandError, match=rf"^{refused} of \d+ row\(s\) were refused"):
            call_command("import_legacy_mappings", str(path), *args, stdout=out, stderr=err)
    else:
        call_command("import_legacy_mappings", str(path), *args, stdout=out, stderr=err)
    errors = [line for line in err.getvalue().splitlines() if not PROGRESS.match(line)]
    return out.getvalue(), "".join(f"{line}\n" for line in errors)


@pytest.fixture
def csv_file(tmp_path, customer):
    path = tmp_path / "mappings.csv"
    path.write_text(
        HEADER
        + f"L-1,tok-1,Alpha,{customer.pk},nethserver,2026-10-01T08:00:00Z\n"
        + f"L-2,tok-2,Beta,{customer.name},,\n"
        + ",tok-3,Missing id,,,\n"  # line 4: no legacy id
        + "L-4,tok-4,Bad org,Nowhere,,\n"  # line 5: unknown organization
        + f"L-5,tok-5,Bad date,{customer.pk},,yesterday\n"  # line 6
    )
    return path


def test_a_dry_run_reports_and_writes_nothing(csv_file):
    out, err = run(csv_file, refused=3)

    assert "Would import 2 mapping(s)" in out
    assert "Dry run" in out
    assert "line 4: legacy_system_id is missing." in err
    assert not LegacyMapping.objects.exists()
    assert not System.objects.exists()


def test_apply_imports_good_rows_and_names_the_bad_ones(csv_file, customer):
    out, err = run(csv_file, "--apply", refused=3)

    assert "Imported 2 mapping(s)" in out and "3 row(s) refused; 5 read." in out
    assert "line 4: legacy_system_id is missing." in err
    assert "line 5: No organization has the id, slug or name 'Nowhere'." in err
    assert "line 6: legacy_last_seen_at 'yesterday'" in err
    assert set(LegacyMapping.objects.values_list("legacy_system_id", flat=True)) == {"L-1", "L-2"}
    assert System.objects.count() == 2  # nothing of the bad rows
    mapping = LegacyMapping.objects.select_related("system").get(legacy_system_id="L-1")
    assert mapping.system.name == "Alpha" and mapping.system.organization == customer
    assert mapping.system.registered_at is None
    assert credentials.verify("tok-1", mapping.legacy_token_digest)
    assert "tok-1" not in json.dumps(list(LegacyMapping.objects.values()), default=str)
    assert CutoverDay.objects.get().mappings == 2
    assert AuditEntry.objects.filter(action="mapping.import").count() == 2
    assert AuditEntry.objects.filter(action="system.create").count() == 2


def test_re_running_is_idempotent(csv_file):
    run(csv_file, "--apply", refused=3)

    out, _ = run(csv_file, "--apply", refused=3)

    assert "Imported 0 mapping(s); 2 already present" in out
    assert LegacyMapping.objects.count() == 2


def test_a_changed_token_is_refused_not_overwritten(tmp_path, csv_file, customer):
    run(csv_file, "--apply", refused=3)
    changed = tmp_path / "changed.csv"
    changed.write_text(HEADER + f"L-1,other-token,Alpha,{customer.pk},,\n")

    _, err = run(changed, "--apply", refused=1)

    assert "line 2: legacy_system_id 'L-1' is already mapped with a different token." in err
    assert credentials.verify(
        "tok-1", LegacyMapping.objects.get(legacy_system_id="L-1").legacy_token_digest
    )


def test_json_and_born_registered(tmp_path, customer):
    path = tmp_path / "mappings.json"
    path.write_text(
        json.dumps(
            [
                {"legacy_system_id": "J-1", "legacy_token": "t"},
                {"legacy_token": "no id"},
            ]
        )
    )

    out, err = run(path, "--apply", "--born-registered", "--organization", customer.name, refused=1)

    assert "Imported 1 mapping(s)" in out
    assert "line 1 (item 2): legacy_system_id is missing." in err
    assert LegacyMapping.objects.get().system.registered_at is not None


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("x.txt", "a", "must end in .csv, .json, .jsonl, .ndjson"),
        ("x.json", "{", "not valid JSON"),
        ("x.json", '{"a": 1}', "JSON list"),
        ("x.json", "[1, 2] 3", "not valid JSON: there is more after its end on line 1"),
        ("x.csv", "name\nfoo\n", "lacks legacy_system_id, legacy_token"),
        ("x.csv", "", "is empty"),
    ],
)
def test_bad_files_are_refused_with_one_sentence(tmp_path, db, name, content, message):
    path = tmp_path / name
    path.write_text(content)

    with pytest.raises(CommandError, match=message):
        run(path, "--apply")


def test_a_missing_file_or_organization_is_refused(tmp_path, db):
    with pytest.raises(CommandError, match="does not exist"):
        run(tmp_path / "absent.csv")
    path = tmp_path / "m.csv"
    path.write_text(HEADER)
    with pytest.raises(CommandError, match="No organization has the id, slug or name 'Nope'"):
        run(path, "--organization", "Nope")


def test_organization_is_found_by_id_and_by_slug(tmp_path, customer):
    path = tmp_path / "m.csv"
    path.write_text("legacy_system_id,legacy_token\nL-1,t1\n")
    run(path, "--apply", "--organization", str(customer.pk))
    path.write_text("legacy_system_id,legacy_token\nL-2,t2\n")
    run(path, "--apply", "--organization", customer.slug)

    assert {m.system.organization for m in LegacyMapping.objects.all()} == {customer}


def test_an_organization_name_two_organizations_have_is_refused(tmp_path, owner):
    first = services.organization_create(actor=None, name="Acme", kind="customer", parent=owner)
    second = services.organization_create(actor=None, name="Acme", kind="customer", parent=owner)
    path = tmp_path / "m.csv"
    path.write_text("legacy_system_id,legacy_token,organization\nL-1,t1,Acme\n")

    with pytest.raises(CommandError) as refused:
        run(path, "--apply", "--organization", "Acme")
    _, err = run(path, "--apply", refused=1)

    candidates = f"acme (id {first.pk}), acme-2 (id {second.pk})"
    assert str(refused.value) == (
        f"2 organizations are named 'Acme': {candidates}; give the slug or the id."
    )
    assert f"line 2: 2 organizations are named 'Acme': {candidates}" in err
    assert not LegacyMapping.objects.exists()


def test_json_lines_and_a_proxy_mappings_object_are_read(tmp_path, customer):
    lines = tmp_path / "m.jsonl"
    lines.write_text('{"legacy_system_id": "J-1", "legacy_token": "t"}\n\n{"legacy_token": "x"}\n')
    wrapped = tmp_path / "m.json"
    wrapped.write_text(
        json.dumps({"exported": "2026", "proxy_mappings": [{"legacy_system_id": "J-2",
                                                             "legacy_token": "t"}]})
    )  # fmt: skip

    _, err = run(lines, "--apply", "--organization", customer.slug, refused=1)
    out, _ = run(wrapped, "--apply", "--organization", customer.slug)

    assert err.strip() == "line 3: legacy_system_id is missing."
    assert "Imported 1 mapping(s)" in out
    assert set(LegacyMapping.objects.values_list("legacy_system_id", flat=True)) == {"J-1", "J-2"}
