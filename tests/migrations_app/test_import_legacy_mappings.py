"""manage.py import_legacy_mappings: dry run, apply, idempotent, bad rows named."""

import json

import pytest
from django.core.management import CommandError, call_command

from fleet_app import credentials
from fleet_app.models import System
from migrations_app.models import LegacyMapping

HEADER = "legacy_system_id,legacy_token,name,organization,type,legacy_last_seen_at\n"


def run(path, *args):
    from io import StringIO

    out, err = StringIO(), StringIO()
    call_command("import_legacy_mappings", str(path), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


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
    out, err = run(csv_file)

    assert "Would import 2 mapping(s)" in out
    assert "Dry run" in out
    assert "line 4: legacy_system_id is missing." in err
    assert not LegacyMapping.objects.exists()
    assert not System.objects.exists()


def test_apply_imports_good_rows_and_names_the_bad_ones(csv_file, customer):
    out, err = run(csv_file, "--apply")

    assert "Imported 2 mapping(s)" in out
    assert "line 4: legacy_system_id is missing." in err
    assert "line 5: organization 'Nowhere' does not exist." in err
    assert "line 6: legacy_last_seen_at 'yesterday'" in err
    assert set(LegacyMapping.objects.values_list("legacy_system_id", flat=True)) == {"L-1", "L-2"}
    assert System.objects.count() == 2  # nothing of the bad rows
    mapping = LegacyMapping.objects.select_related("system").get(legacy_system_id="L-1")
    assert mapping.system.name == "Alpha" and mapping.system.organization == customer
    assert mapping.system.registered_at is None
    assert credentials.verify("tok-1", mapping.legacy_token_digest)
    assert "tok-1" not in json.dumps(list(LegacyMapping.objects.values()), default=str)


def test_re_running_is_idempotent(csv_file):
    run(csv_file, "--apply")

    out, _ = run(csv_file, "--apply")

    assert "Imported 0 mapping(s); 2 already present" in out
    assert LegacyMapping.objects.count() == 2


def test_a_changed_token_is_refused_not_overwritten(tmp_path, csv_file, customer):
    run(csv_file, "--apply")
    changed = tmp_path / "changed.csv"
    changed.write_text(HEADER + f"L-1,other-token,Alpha,{customer.pk},,\n")

    _, err = run(changed, "--apply")

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

    out, err = run(path, "--apply", "--born-registered", "--organization", customer.name)

    assert "Imported 1 mapping(s)" in out
    assert "item 2: legacy_system_id is missing." in err
    assert LegacyMapping.objects.get().system.registered_at is not None


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("x.txt", "a", "must end in .csv or .json"),
        ("x.json", "{", "not valid JSON"),
        ("x.json", '{"a": 1}', "JSON list"),
        ("x.csv", "name\nfoo\n", "lacks legacy_system_id, legacy_token"),
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
    with pytest.raises(CommandError, match="Organization 'Nope' does not exist"):
        run(path, "--organization", "Nope")
