"""``manage.py import_legacy_accounts``: organizations, users with memberships, non-default
quota limits and usage, from JSON or CSV; colliding e-mails imported inactive and flagged."""

import io
import json
import re

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Lower

from fleet_app.models import AuditEntry, Membership, Organization, Quota, User
from migrations_app.accounts import selectors
from migrations_app.models import LegacyAccount, LegacyOrganization

pytestmark = pytest.mark.django_db
PROGRESS = re.compile(r"^\d+/\d+ bytes$")

EXPORT = {
    "organizations": [
        {"legacy_id": "o1", "name": "Acme Distribution", "kind": "distributor"},
        {"legacy_id": "o2", "name": "Acme Customer", "kind": "customer", "parent": "o1"},
    ],
    "users": [
        {
            "legacy_id": "u1",
            "email": "ann@example.com",
            "is_active": True,
            "date_joined": "2019-03-01T10:00:00Z",
            "last_login": "2024-05-01T08:30:00Z",
            "memberships": [{"organization": "o2", "role": "admin"}, {"organization": "o1"}],
        },
        {
            "legacy_id": "u2",
            "email": "ANN@example.com",
            "is_active": True,
            "date_joined": "2018-01-01",
            "memberships": [{"organization": "o2", "role": "member"}],
        },
        {"legacy_id": "u3", "email": "Ann@Example.com", "is_active": False},
        {"legacy_id": "u4", "email": "bob@example.com", "full_name": "Bob"},
    ],
    "quotas": [
        {"organization": "o1", "resource": "systems", "limit": 50},
        {"organization": "o2", "resource": "systems", "limit": 100},  # the default
        {"user": "u1", "resource": "backup_bytes", "limit": None},  # the default
        {"user": "u4", "resource": "backup_bytes", "limit": 5_000_000},
    ],
    "usage": [
        {"organization": "o1", "resource": "systems", "usage": 3},
        {"user": "u4", "resource": "backup_bytes", "usage": 1234},
    ],
}


def run_command(*args, refused: int = 0) -> tuple[str, str]:
    """stdout, and stderr without its progress lines; with ``refused``, the command must
    fail naming that many refused rows."""
    out, err = io.StringIO(), io.StringIO()
    if refused:
        with pytest.raises(CommandError, match=rf"^{refused} of \d+ row\(s\) were refused"):
            call_command("import_legacy_accounts", *[str(a) for a in args], stdout=out, stderr=err)
    else:
        call_command("import_legacy_accounts", *[str(a) for a in args], stdout=out, stderr=err)
    errors = [line for line in err.getvalue().splitlines() if not PROGRESS.match(line)]
    return out.getvalue(), "".join(f"{line}\n" for line in errors)


def write_json(tmp_path, data, name="accounts.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def counts() -> dict[str, int]:
    models = (User, Organization, Membership, Quota, LegacyAccount, LegacyOrganization, AuditEntry)
    return {model.__name__: model._base_manager.count() for model in models}


def legacy_user(legacy_id: str) -> User:
    return LegacyAccount.objects.select_related("user").get(legacy_id=legacy_id).user


def test_a_json_export_is_imported(owner, tmp_path, settings):
    settings.FLEET_QUOTA_DEFAULTS = {"systems": 100, "backup_bytes": 10**9}

    out, err = run_command(write_json(tmp_path, EXPORT), "--apply")

    assert err == ""
    assert "Imported 2 organizations, 4 users, 2 quotas, 2 usage" in out
    assert "2 account(s) flagged" in out and "2 default limit(s) not kept" in out
    o1 = LegacyOrganization.objects.get(legacy_id="o1").organization
    o2 = LegacyOrganization.objects.get(legacy_id="o2").organization
    assert (o1.parent, o2.parent, o2.kind) == (owner, o1, "customer")
    ann = legacy_user("u1")
    assert ann.is_active and ann.email == "ann@example.com"
    assert ann.last_login.isoformat() == "2024-05-01T08:30:00+00:00"
    assert not ann.has_usable_password()
    assert ann.organization == o2
    assert dict(Membership.objects.filter(user=ann).values_list("organization", "role")) == {
        o2.pk: "admin",
        o1.pk: "member",
    }
    # The later active collider is imported inactive, flagged, its legacy flag kept.
    ann2 = LegacyAccount.objects.select_related("user").get(legacy_id="u2")
    assert (ann2.user.is_active, ann2.was_active, ann2.flagged_duplicate) == (False, True, True)
    ann3 = LegacyAccount.objects.get(legacy_id="u3")
    assert (ann3.user.is_active, ann3.was_active, ann3.flagged_duplicate) == (False, False, True)
    assert not LegacyAccount.objects.get(legacy_id="u4").flagged_duplicate
    # Only non-default limits are kept; usage lands on the same rows.
    assert set(Quota.objects.values_list("organization", "user", "resource", "limit", "usage")) == {
        (o1.pk, None, "systems", 50, 3),
        (None, legacy_user("u4").pk, "backup_bytes", 5_000_000, 1234),
    }
    # The case-insensitive constraint on active accounts still holds.
    active = User.objects.filter(is_active=True).annotate(key=Lower("email"))
    assert sorted(active.values_list("key", flat=True)) == ["ann@example.com", "bob@example.com"]
    # One entry per batch, listing every account it imported.
    (entry,) = AuditEntry.objects.filter(action="user.import")
    assert len(entry.after["accounts"]) == 4


def test_the_flagged_accounts_are_what_dedupe_finds(owner, tmp_path):
    run_command(write_json(tmp_path, EXPORT), "--apply")

    (group,) = selectors.dedupe_plan(selectors.duplicates_find())

    assert sorted(a.email for a in group.accounts) == sorted(
        # Stored as typed; only the domain is lower-cased.
        ["ann@example.com", "ANN@example.com", "Ann@example.com"]
    )
    flagged = {a.id: a.counts_as_active for a in group.accounts if a.flagged_duplicate}
    assert flagged == {legacy_user("u2").pk: True, legacy_user("u3").pk: False}
    assert group.survivor_id == legacy_user("u1").pk  # active, and the latest login


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite folds ASCII only")
def test_unicode_emails_that_collide_are_flagged(owner, tmp_path):
    data = {
        "users": [
            {"legacy_id": "a", "email": "émile@example.com"},
            {"legacy_id": "b", "email": "ÉMILE@example.com"},
        ]
    }

    run_command(write_json(tmp_path, data), "--apply")

    assert LegacyAccount.objects.get(legacy_id="b").flagged_duplicate
    assert not legacy_user("b").is_active


def test_csv_files_are_recognized_by_their_header(owner, tmp_path):
    (tmp_path / "orgs.csv").write_text(
        "legacy_id,name,kind,parent\no1,Acme,distributor,\no2,Acme Customer,customer,o1\n"
    )
    (tmp_path / "users.csv").write_text(
        "legacy_id,email,is_active,date_joined,last_login,full_name,memberships\n"
        "u1,ann@example.com,true,2019-03-01,,Ann,o2:admin;o1\n"
        "u2,ANN@example.com,yes,2018-01-01,,,\n"
    )
    (tmp_path / "quotas.csv").write_text("organization,user,resource,limit\no1,,systems,7\n")
    (tmp_path / "usage.csv").write_text("organization,user,resource,usage\n,u1,systems,2\n")

    # Given in any order: sections are imported organizations first.
    out, err = run_command(*(tmp_path / f for f in ("usage.csv", "users.csv", "quotas.csv",
                                                    "orgs.csv")), "--apply")  # fmt: skip

    assert err == "", err
    assert "Imported 2 organizations, 2 users, 1 quotas, 1 usage" in out
    assert Membership.objects.filter(user=legacy_user("u1")).count() == 2
    assert not legacy_user("u2").is_active
    assert Quota.objects.get(user=legacy_user("u1")).usage == 2


def test_import_shows_progress_on_stderr(owner, tmp_path):
    err = io.StringIO()

    path = write_json(tmp_path, EXPORT)

    call_command("import_legacy_accounts", str(path), stderr=err)

    # One pass over the file per section it holds.
    size = 4 * path.stat().st_size
    assert err.getvalue().splitlines()[-1] == f"{size}/{size} bytes"


def test_bad_rows_are_named_and_nothing_of_them_is_written(owner, tmp_path):
    (tmp_path / "orgs.csv").write_text("legacy_id,name,kind,parent\no1,Acme,customer,\n")
    (tmp_path / "users.csv").write_text(
        "legacy_id,email,is_active,date_joined,memberships\n"
        "u1,ann@example.com,true,2019-03-01,o1:admin\n"  # line 2: good
        "u2,,true,,\n"  # line 3
        "u3,not-an-address,true,,\n"  # line 4
        "u4,carl@example.com,true,yesterday,o1\n"  # line 5
        "u5,dora@example.com,true,,o9:admin\n"  # line 6
        "u6,emma@example.com,maybe,,\n"  # line 7
        "u7,fred@example.com,false,2020-01-01,o1:reader\n"  # line 8: good
    )
    data = {"users": [{"legacy_id": "j1", "email": "gina@example.com"}, "not a row"]}
    (tmp_path / "more.json").write_text(json.dumps(data))
    (tmp_path / "quotas.csv").write_text(
        "organization,user,resource,limit\no1,,cpus,3\no1,u1,systems,3\n,u3,systems,3\n"
    )

    out, err = run_command(
        *(tmp_path / f for f in ("orgs.csv", "users.csv", "more.json", "quotas.csv")),
        "--apply",
        "--skip-bad-rows",
        refused=9,
    )

    assert err.splitlines() == [
        "users.csv line 3: email is missing.",
        "users.csv line 4: email 'not-an-address' is not an e-mail address.",
        "users.csv line 5: date_joined 'yesterday' is not an ISO 8601 date or date-time.",
        "users.csv line 6: organization 'o9' is not in the import or the database.",
        "users.csv line 7: is_active 'maybe' is not true or false.",
        "more.json line 1 (users item 2): is not an object of named fields.",
        "quotas.csv line 2: resource 'cpus' is unknown; use systems, backup_bytes, "
        "cyclades.vm, cyclades.cpu, cyclades.ram, cyclades.disk, cyclades.network.private, "
        "pithos+.diskspace.",
        "quotas.csv line 3: give exactly one of organization and user.",
        "quotas.csv line 4: user 'u3' is not in the import or the database.",
    ]
    assert "8 row(s) refused" not in out and "9 row(s) refused" in out
    assert set(LegacyAccount.objects.values_list("legacy_id", flat=True)) == {"u1", "u7", "j1"}
    assert set(User.objects.values_list("email", flat=True)) == {
        "ann@example.com",
        "fred@example.com",
        "gina@example.com",
    }
    # The bad rows' memberships were not written either (u4 named a good organization).
    assert Membership.objects.count() == 2
    assert not Quota.objects.exists()


def test_a_dry_run_writes_nothing(owner, tmp_path):
    before = counts()

    out, _ = run_command(write_json(tmp_path, EXPORT))

    assert "Would import 2 organizations, 4 users, 2 quotas, 2 usage" in out
    assert "Dry run: nothing was written" in out
    assert counts() == before


def test_importing_twice_changes_nothing(owner, tmp_path):
    path = write_json(tmp_path, EXPORT)
    run_command(path, "--apply")
    before = counts()

    out, _ = run_command(path, "--apply")

    assert "Imported 0 organizations, 0 users, 0 quotas, 0 usage" in out
    assert "10 row(s) already present" in out and "2 default limit(s) not kept" in out
    assert counts() == before


def test_an_active_collider_of_an_existing_account_is_imported_inactive(owner, tmp_path):
    existing = User.objects.create_user("Ann@Example.com", "pw")

    row = {"legacy_id": "u1", "email": "ann@example.com", "is_active": True}
    _, err = run_command(write_json(tmp_path, {"users": [row]}), "--apply")

    assert err == ""

    imported = LegacyAccount.objects.get(legacy_id="u1")
    assert (imported.user.is_active, imported.was_active, imported.flagged_duplicate) == (
        False,
        True,
        True,
    )
    existing.refresh_from_db()
    assert existing.is_active
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.filter(pk=imported.user_id).update(is_active=True)


@pytest.mark.parametrize(
    "content, name, message",
    [
        (None, "missing.json", "does not exist"),
        ("{", "bad.json", "is not valid JSON"),
        ("[]", "list.json", "must hold a JSON object"),
        ('{"people": []}', "odd.json", "unknown section 'people'"),
        ("a,b\n1,2\n", "odd.csv", "the header names no known section"),
        ("x", "file.txt", "must end in .csv, .json, .jsonl, .ndjson"),
    ],
)
def test_unreadable_files_are_refused_with_a_sentence(tmp_path, content, name, message, db):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)

    with pytest.raises(CommandError, match=message):
        run_command(path)


def test_an_unknown_under_organization_is_refused(tmp_path, owner):
    with pytest.raises(CommandError, match="No organization has the id, slug or name 'Nowhere'"):
        run_command(write_json(tmp_path, EXPORT), "--under", "Nowhere")


# --- The legacy format, whole -------------------------------------------------------------

SYNNEFO_USERS = (
    "legacy_id,uuid,email,is_active,email_verified,date_joined,memberships,vms,networks,files\n"
)


def test_the_legacy_format_carries_uuids_flags_counts_and_every_resource(owner, tmp_path):
    (tmp_path / "orgs.csv").write_text("legacy_id,name,kind,parent\no1,Acme,customer,\n")
    (tmp_path / "users.csv").write_text(
        SYNNEFO_USERS
        + "u1,9b6a1c2e-0d6f-4c49-8a55-3f1c2b7d9e01,kpap@grnet.gr,true,true,2012-05-01,"
        "o1:project-owner,3,1,1200\n"
    )
    resources = [
        "cyclades.vm",
        "cyclades.cpu",
        "cyclades.ram",
        "cyclades.disk",
        "cyclades.network.private",
        "pithos+.diskspace",
    ]
    (tmp_path / "quotas.csv").write_text(
        "user,resource,limit\n" + "".join(f"u1,{r},{10 + n}\n" for n, r in enumerate(resources))
    )
    (tmp_path / "usage.csv").write_text(
        "user,resource,usage\n" + "".join(f"u1,{r},{n}\n" for n, r in enumerate(resources))
    )

    run_command(*(tmp_path / f for f in ("orgs.csv", "users.csv", "quotas.csv", "usage.csv")),
                "--apply")  # fmt: skip

    account = LegacyAccount.objects.get(legacy_id="u1")
    assert str(account.uuid) == "9b6a1c2e-0d6f-4c49-8a55-3f1c2b7d9e01"
    assert (account.email_verified, account.vms, account.networks, account.files) == (
        True,
        3,
        1,
        1200,
    )
    assert account.user.legacy_roles.get().role == "project-owner"
    stored = dict(Quota.objects.filter(user=account.user).values_list("resource", "limit"))
    assert stored == {r: 10 + n for n, r in enumerate(resources)}


def test_every_bad_row_is_named_and_the_file_writes_nothing(owner, tmp_path):
    (tmp_path / "orgs.csv").write_text("legacy_id,name,kind,parent\no1,Acme,customer,\n")
    users = tmp_path / "users.csv"
    users.write_bytes(
        SYNNEFO_USERS.encode()
        + b"u1,,ann@example.com,true,false,,o1,0,0,0\n"  # 2: good
        + b"u2,,nul\x00@example.com,true,false,,,0,0,0\n"  # 3: a NUL
        + b"u3,,bob@example.com,true,false,,,99999999999,0,0\n"  # 4: out of range
        + b"u1,,carl@example.com,true,false,,,0,0,0\n"  # 5: duplicate legacy_id
        + b"u5,,dora@example.com,true\n"  # 6: short
        + "u6,,emma\u2028x@example.com,true,false,,,0,0,0\n".encode()  # 7: U+2028 in a field
        + b"u7,not-a-uuid,fred@example.com,true,false,,,0,0,0\n"  # 8
        + b"u8,,gina@example.com,true,false,,,0,0,0\n"  # 9: good
    )
    before = counts()

    out, err = run_command(tmp_path / "orgs.csv", users, "--apply", refused=6)

    assert err.splitlines() == [
        "users.csv line 3: email holds a NUL character.",
        "users.csv line 4: vms 99999999999 is larger than 2147483647.",
        "users.csv line 5: legacy_id 'u1' was already given on users.csv line 2.",
        "users.csv line 6: has 4 fields where the header has 10.",
        # Shown escaped: the separator never breaks the report's line either.
        "users.csv line 7: email 'emma\\u2028x@example.com' is not an e-mail address.",
        "users.csv line 8: uuid 'not-a-uuid' is not a UUID.",
    ]
    assert "Nothing was written: fix the refused rows" in out
    assert counts() == before

    out, _ = run_command(tmp_path / "orgs.csv", users, "--apply", "--skip-bad-rows", refused=6)

    assert "Skipped 6 refused row(s) (--skip-bad-rows)." in out
    assert set(LegacyAccount.objects.values_list("legacy_id", flat=True)) == {"u1", "u8"}
