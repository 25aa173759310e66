"""``manage.py dedupe_users``: finding case-insensitive duplicates, the survivor rule, the
plan, merging every relation through the model graph, failures, checkpoint, lock."""

import csv
import io
import json

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, connections, transaction
from knox.models import AuthToken

from fleet_app import services
from fleet_app.locks import _lock_id
from fleet_app.models import AuditEntry, Membership, Quota, System, User, canonical_email_key
from migrations_app.accounts import merge as account_merge
from migrations_app.accounts import selectors
from migrations_app.accounts import services as dedupe
from migrations_app.models import (
    DedupeCheckpoint,
    DedupeJournal,
    DedupeMerged,
    DedupeRun,
    LegacyAccount,
    RotationRun,
)
from tests.migrations_app.accounts_fixtures import (
    days_ago,
    give_everything,
    make_account,
    snapshot,
)

pytestmark = pytest.mark.django_db

# SQLite's lower() folds ASCII only; PostgreSQL (production and CI) folds Unicode too.
unicode_needs_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite lower() does not fold non-ASCII letters"
)


def run_command(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("dedupe_users", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- Finding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "emails",
    [
        ("ann@example.com", "ANN@example.com", "Ann@Example.com"),
        pytest.param(
            ("émile@example.com", "ÉMILE@example.com", "Émile@EXAMPLE.com"),
            marks=unicode_needs_postgresql,
        ),
        pytest.param(
            ("σοφία@example.gr", "ΣΟΦΊΑ@example.gr"),
            marks=unicode_needs_postgresql,
        ),
    ],
)
def test_it_groups_emails_that_differ_only_in_case(emails):
    first, *others = emails
    members = [make_account(first)] + [make_account(e, active=False) for e in others]
    make_account("single@example.com")
    make_account("other@example.com", active=False)

    groups = selectors.duplicates_find()

    assert len(groups) == 1
    assert groups[0].key == canonical_email_key(first)
    assert sorted(a.id for a in groups[0].accounts) == sorted(u.pk for u in members)


def test_the_finder_runs_two_queries_whatever_the_number_of_accounts(
    django_assert_num_queries,
):
    for n in range(30):
        make_account(f"user{n}@example.com")
        make_account(f"USER{n}@example.com", active=False)
        make_account(f"User{n}@Example.com", active=False)

    # PostgreSQL: 1. the members of every group (email_key and UPPER(email) aggregates in
    # one statement, with their legacy flags); 2. the review queue's decisions on them.
    # SQLite computes the legacy rule in Python: + the canonical keys and every e-mail.
    finder = 2 if connection.vendor == "postgresql" else 4
    with django_assert_num_queries(finder):
        groups = selectors.duplicates_find(with_owned=False)

    assert len(groups) == 30
    # "What it owns" adds one grouped count per relation, not one per account.
    with django_assert_num_queries(finder + len(selectors.user_relations())):
        selectors.duplicates_find()


def test_accounts_already_merged_are_not_found_again():
    make_account("ann@example.com", login=1)
    make_account("ANN@example.com", active=False)

    run_command("--apply")

    assert selectors.duplicates_find() == []
    out, _ = run_command()
    assert "No duplicate accounts" in out


# --- Survivor rule -----------------------------------------------------------------------


def _account(pk, *, active=True, login=None, joined=100, legacy=None):
    return selectors.Account(
        id=pk,
        email=f"a{pk}@example.com",
        is_active=active,
        date_joined=days_ago(joined),
        last_login=days_ago(login) if login is not None else None,
        legacy_was_active=legacy[0] if legacy else None,
        flagged_duplicate=legacy[1] if legacy else False,
    )


@pytest.mark.parametrize(
    "members, survivor, reason",
    [
        # Active before inactive, even against a more recent login and an older account.
        ([_account(1, active=False, login=1, joined=900), _account(2, login=300)], 2, "active"),
        # Then the most recent login.
        ([_account(1, login=30), _account(2, login=2)], 2, "most recent login"),
        # A login beats none at all.
        ([_account(1, joined=900), _account(2, login=400)], 2, "most recent login"),
        # Then the oldest account.
        ([_account(1, joined=10), _account(2, joined=20)], 2, "oldest"),
        # Then the lowest id.
        ([_account(2, joined=10), _account(1, joined=10)], 1, "oldest"),
        # Imported inactive only because its e-mail collided: it was active on the legacy side.
        (
            [
                _account(1, active=False, login=1, legacy=(True, True)),
                _account(2, active=False, login=9, legacy=(False, True)),
            ],
            1,
            "active",
        ),
    ],
)
def test_the_survivor_rule(members, survivor, reason):
    group = selectors.DuplicateGroup(key="a@example.com", accounts=members)

    selectors.dedupe_plan([group])

    assert (group.survivor_id, group.reason) == (survivor, reason)


def test_prefer_overrides_the_rule_per_group():
    keep = make_account("ann@example.com", login=1)
    preferred = make_account("ANN@example.com", active=False, joined=5)
    bob = make_account("bob@example.com", login=1)
    make_account("BOB@example.com", active=False)

    out, _ = run_command("--apply", "--prefer", str(preferred.pk))

    assert f"keep {preferred.pk} (preferred)" in out
    assert f"keep {bob.pk} (active)" in out
    preferred.refresh_from_db()
    keep.refresh_from_db()
    # The group had an active account: the preferred survivor is the active one now.
    assert preferred.is_active and not keep.is_active


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prefer", "999999"], "is not in any duplicate group"),
        (["--prefer", "{a}", "--prefer", "{b}"], "are in the same group"),
        (["--delete"], "needs --apply"),
        (["--json", "--csv"], "Choose one report format"),
        (["--undo", "999999"], "Dedupe run 999999 does not exist"),
        (["--undo", "1", "--apply"], "--undo restores a run"),
        (["--force"], "--force only applies to --undo"),
        (["--checkpoint", "1", "--apply"], "give it alone"),
    ],
)
def test_bad_arguments_are_refused_with_a_sentence(args, message):
    a = make_account("ann@example.com")
    b = make_account("ANN@example.com", active=False)
    args = [arg.format(a=a.pk, b=b.pk) for arg in args]

    with pytest.raises(CommandError, match=message):
        run_command(*args)

    assert not DedupeRun.objects.exists()


# --- Dry run -----------------------------------------------------------------------------


def test_a_dry_run_prints_the_groups_and_the_plan_and_writes_nothing(customer):
    survivor = make_account("ann@example.com", login=1, organization=customer)
    other = make_account("Ann@example.com", active=False, joined=400)
    give_everything(other, customer)
    before = snapshot()
    audit_count = AuditEntry.objects.count()

    out, _ = run_command()

    assert "1 duplicate group(s) of 2 account(s)" in out
    assert f"ann@example.com — keep {survivor.pk} (active)" in out
    assert f"merge {other.pk:>8}  Ann@example.com  inactive" in out
    assert "owns 2 AuditEntry.actor, 1 AuthToken.user, 1 LogEntry.user, 1 Membership.user" in out
    assert f"moves to {survivor.pk}:" in out and "1 System.created_by" in out
    assert "Dry run: nothing was changed" in out
    assert snapshot() == before
    assert AuditEntry.objects.count() == audit_count
    assert not DedupeRun.objects.exists() and not DedupeJournal.objects.exists()


def test_json_and_csv_reports(customer):
    survivor = make_account("ann@example.com", login=1)
    other = make_account("ANN@example.com", active=False)
    give_everything(other, customer)

    out, _ = run_command("--json")
    report = json.loads(out)
    (group,) = report["groups"]
    assert group["email"] == "ann@example.com"
    assert group["survivor"] == survivor.pk and group["others"] == [other.pk]
    assert group["moves"]["System.created_by"] == 1
    assert report["run"] is None

    out, _ = run_command("--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(int(r["account_id"]), r["action"]) for r in rows] == [
        (survivor.pk, "keep"),
        (other.pk, "merge"),
    ]

    out, _ = run_command("--apply", "--json")
    report = json.loads(out)
    assert report["run"]["merged"] == 1 and report["run"]["failed"] == 0
    assert report["groups"][0]["status"] == "merged"


# --- Merging -----------------------------------------------------------------------------


def test_apply_moves_every_relation_to_the_survivor(customer, other_customer):
    survivor = make_account("ann@example.com", login=1, organization=customer)
    mine = give_everything(survivor, customer, role="member", usage=1)
    AuthToken.objects.filter(user=survivor).delete()  # the survivor has no API token
    other = make_account("ANN@example.com", active=False, joined=900)
    theirs = give_everything(other, customer, role="admin", usage=2)
    Quota.objects.filter(pk=theirs["quota"].pk).update(limit=50)
    # A second membership, which collides with nothing, and one more system.
    Membership.objects.create(user=other, organization=other_customer)
    elsewhere = services.system_create(actor=other, organization=other_customer, name="x").system
    (their_token,) = AuthToken.objects.filter(user=other)

    out, err = run_command("--apply")

    assert "1 group(s) merged, 0 failed (succeeded)" in out, out + err
    other.refresh_from_db()
    assert not other.is_active
    # Owned systems, audit references, admin history, runs of another app (migrations_app).
    assert set(System.objects.filter(created_by=survivor)) == {
        mine["system"],
        theirs["system"],
        elsewhere,
    }
    assert AuditEntry.objects.filter(actor=other).count() == 0
    assert LogEntry.objects.filter(user=other).count() == 0
    assert RotationRun.objects.filter(created_by=survivor).count() == 2
    # API tokens (knox, another app): moved, and they authenticate as the survivor.
    assert AuthToken.objects.get(user=survivor).digest == their_token.digest
    # Memberships: the colliding one merged into the survivor's row with the stronger role.
    assert Membership.objects.get(user=survivor, organization=customer).role == "admin"
    assert Membership.objects.get(user=survivor, organization=other_customer).role == "member"
    assert not Membership.objects.filter(user=other).exists()
    # Quota usage summed; the other's 50 is below the survivor's default (100), which stays.
    quota = Quota.objects.get(user=survivor, resource="systems")
    assert (quota.usage, quota.limit) == (1 + 2, None)
    # Group grants (an auto-created many-to-many table).
    assert list(survivor.groups.values_list("name", flat=True)) == ["reader"]
    assert not other.groups.exists()
    # Journal and audit.
    entry = DedupeJournal.objects.get()
    assert (entry.state, entry.survivor_id, entry.merged_ids) == ("merged", survivor.pk, [other.pk])
    assert AuditEntry.objects.filter(action="user.merge", object_id=str(survivor.pk)).exists()
    assert DedupeMerged.objects.filter(user_id=other.pk, survivor_id=survivor.pk).exists()


def test_nothing_points_at_a_merged_account_afterwards(customer):
    survivor = make_account("ann@example.com", login=1)
    others = [
        make_account("ANN@example.com", active=False, legacy=(True, True)),
        make_account("Ann@example.com", active=False),
    ]
    for user in [survivor, *others]:
        give_everything(user, customer)

    run_command("--apply")

    merged = {u.pk for u in others}
    for relation in selectors.user_relations():
        pointing = relation.model._base_manager.filter(
            **{f"{relation.field.attname}__in": merged}
        ).count()
        # Only the account's own legacy identity stays with it.
        expected = 1 if relation.label == "migrations_app.LegacyAccount.user" else 0
        assert pointing == expected, relation.label


def test_the_model_graph_includes_hidden_relations_and_other_apps():
    labels = {relation.label for relation in selectors.user_relations()}

    assert {
        "admin.LogEntry.user",
        "knox.AuthToken.user",
        "fleet_app.AuditEntry.actor",
        "fleet_app.System.created_by",  # related_name="+": not in related_objects
        "fleet_app.User_groups.user",  # the many-to-many grant table
        "fleet_app.User_user_permissions.user",
        "fleet_app.Membership.user",
        "fleet_app.Quota.user",
        "migrations_app.RotationRun.created_by",
        "migrations_app.LegacyAccount.user",
    } <= labels


def test_the_survivor_keeps_its_token_and_receives_the_duplicates(customer):
    survivor = make_account("ann@example.com", login=1)
    own, _ = AuthToken.objects.create(user=survivor)
    other = make_account("ANN@example.com", active=False)
    theirs, _ = AuthToken.objects.create(user=other)

    run_command("--apply")

    # An account may hold several tokens: nothing collides, both now act as the survivor.
    assert set(AuthToken.objects.filter(user=survivor)) == {own, theirs}
    change = next(c for c in DedupeJournal.objects.get().changes if c["model"] == "knox.AuthToken")
    assert change["op"] != "delete"


def test_a_legacy_active_account_can_survive_and_becomes_active():
    here = make_account("ann@example.com", login=50, legacy=(True, False))
    legacy = make_account("ANN@example.com", active=False, login=1, legacy=(True, True))

    run_command("--apply")

    here.refresh_from_db()
    legacy.refresh_from_db()
    assert legacy.is_active and not here.is_active


def test_after_a_dedupe_the_database_refuses_a_new_active_duplicate():
    make_account("ann@example.com", login=1)
    make_account("ANN@example.com", active=False)
    run_command("--apply")

    with pytest.raises(IntegrityError), transaction.atomic():
        make_account("aNN@EXAMPLE.COM")
    out, _ = run_command()
    assert "No duplicate accounts" in out


def test_delete_removes_the_merged_accounts_but_keeps_their_legacy_ids(customer):
    survivor = make_account("ann@example.com", login=1)
    other = make_account("ANN@example.com", active=False, legacy=(False, True))
    give_everything(other, customer)

    out, _ = run_command("--apply", "--delete")

    assert "were deleted" in out
    assert not User.objects.filter(pk=other.pk).exists()
    assert LegacyAccount.objects.get(legacy_id=f"legacy-{other.pk}").user is None
    assert System.objects.get().created_by == survivor


def test_a_failing_group_rolls_back_alone(customer, monkeypatch):
    ann = make_account("ann@example.com", login=1)
    ann_dup = make_account("ANN@example.com", active=False)
    give_everything(ann_dup, customer)
    bob = make_account("bob@example.com", login=1)
    bob_dup = make_account("BOB@example.com", active=False)
    bob_things = give_everything(bob_dup, customer)
    real_move = account_merge._move_batch

    def move_then_break(relation, batch):
        real_move(relation, batch)
        # Fails half-way through bob's group, after some of its rows moved.
        if bob.pk in batch.owner and relation.label == "fleet_app.System.created_by":
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(account_merge, "_move_batch", move_then_break)
    bob_before = snapshot()

    out, err = run_command("--apply")

    run = DedupeRun.objects.get()
    assert (run.state, run.done, run.failed) == ("partially_failed", 1, 1)
    assert "group bob@example.com failed: RuntimeError: disk on fire" in err
    assert "1 group(s) merged, 1 failed" in out
    # ann's group went through …
    ann_dup.refresh_from_db()
    assert not ann_dup.is_active and System.objects.filter(created_by=ann).exists()
    # … bob's is exactly as it was (the rows that had moved were rolled back).
    bob_dup.refresh_from_db()
    assert System.objects.get(pk=bob_things["system"].pk).created_by == bob_dup
    assert AuthToken.objects.filter(user=bob_dup).exists()
    assert not DedupeMerged.objects.filter(user_id=bob_dup.pk).exists()
    assert DedupeJournal.objects.get(email_key="bob@example.com").state == "failed"
    after = snapshot()
    for label in ("knox.AuthToken.user", "fleet_app.Membership.user", "fleet_app.Quota.user"):
        assert [r for r in after[label] if r["user_id"] == bob_dup.pk] == [
            r for r in bob_before[label] if r["user_id"] == bob_dup.pk
        ]
    # The failed group is still there to retry.
    assert [g.key for g in selectors.duplicates_find()] == ["bob@example.com"]


# --- Checkpoint --------------------------------------------------------------------------


def test_the_checkpoint_is_written_before_the_first_change(customer, monkeypatch, tmp_path):
    survivor = make_account("ann@example.com", login=1)
    other = make_account("ANN@example.com", active=False)
    give_everything(other, customer)
    before = snapshot()
    seen = []
    real_merge = dedupe.groups_merge

    def merge(**kwargs):
        seen.append(DedupeCheckpoint.objects.filter(run=kwargs["run"]).count())
        return real_merge(**kwargs)

    monkeypatch.setattr(dedupe, "groups_merge", merge)

    run_command("--apply", "--delete")

    assert seen == [1]
    run = DedupeRun.objects.get()
    rows = selectors.dedupe_checkpoint_rows(run=run)
    backed_up = {(r["model"], str(r["pk"])) for r in rows}
    assert ("fleet_app.user", str(other.pk)) in backed_up
    assert ("fleet_app.user", str(survivor.pk)) in backed_up
    assert ("knox.authtoken", AuthToken.objects.get(user=survivor).pk) in backed_up
    assert sum(1 for model, _ in backed_up if model == "fleet_app.system") == 1

    # The checkpoint is in dumpdata format: loaddata puts the rows back.
    out, _ = run_command("--checkpoint", str(run.pk))
    backup = tmp_path / "backup.json"
    backup.write_text(out)
    call_command("loaddata", str(backup), verbosity=0)
    assert snapshot() == before


# --- Lock and progress -------------------------------------------------------------------


@pytest.mark.skipif(connection.vendor != "postgresql", reason="advisory locks are PostgreSQL's")
def test_two_dedupes_cannot_overlap():
    make_account("ann@example.com")
    make_account("ANN@example.com", active=False)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [_lock_id("dedupe_users")])
        with pytest.raises(CommandError, match="Another dedupe is running"):
            run_command("--apply")
    finally:
        # Released before closing: a closed session frees its locks only once its backend
        # has exited, and the next test must find the lock free.
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock_all()")
        other.close()
    assert not DedupeRun.objects.exists()


def test_apply_shows_progress_on_stderr():
    for n in range(3):
        make_account(f"u{n}@example.com")
        make_account(f"U{n}@example.com", active=False)

    _, err = run_command("--apply")

    assert "3/3 groups" in err
