"""``manage.py dedupe_users --undo RUN_ID``: accounts and every relation come back exactly."""

import io

import pytest
from django.core.management import CommandError, call_command
from knox.models import AuthToken

from fleet_app.models import Membership, Quota, User
from migrations_app.accounts import selectors
from migrations_app.models import DedupeJournal, DedupeMerged, DedupeRun
from tests.migrations_app.accounts_fixtures import give_everything, make_account, snapshot

pytestmark = pytest.mark.django_db


def run_command(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("dedupe_users", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def world(customer, other_customer) -> dict[str, User]:
    """Two groups whose accounts all own one row of every kind, with collisions on every
    unique relation (membership, quota, group grant), API tokens (moved, never colliding:
    an account may hold several) and legacy identities."""
    ann = make_account("ann@example.com", login=1, organization=customer, legacy=(True, False))
    ann2 = make_account("ANN@example.com", active=False, joined=900, legacy=(True, True))
    ann3 = make_account("Ann@Example.com", active=False, joined=5, legacy=(False, True))
    bob = make_account("bob@example.com", active=False, login=3)
    bob2 = make_account("BOB@example.com", active=False, login=9)
    for user, role in ((ann, "member"), (ann2, "admin"), (ann3, "reader")):
        give_everything(user, customer, role=role, usage=user.pk)
    give_everything(bob, other_customer)
    give_everything(bob2, customer)
    Quota.objects.filter(user=ann2).update(limit=7)
    Membership.objects.create(user=ann3, organization=other_customer, role="owner")
    return {"ann": ann, "ann2": ann2, "ann3": ann3, "bob": bob, "bob2": bob2}


@pytest.mark.parametrize("delete", [False, True], ids=["deactivate", "delete"])
def test_undo_restores_accounts_and_relations_exactly(customer, other_customer, delete):
    world(customer, other_customer)
    before = snapshot()

    run_command("--apply", *(["--delete"] if delete else []))
    run = DedupeRun.objects.get()
    assert run.done == 2
    assert snapshot() != before

    out, err = run_command("--undo", str(run.pk))

    assert "2 group(s) restored, 0 failed (succeeded)" in out, out + err
    assert snapshot() == before
    run.refresh_from_db()
    assert run.undone_at is not None
    assert set(DedupeJournal.objects.values_list("state", flat=True)) == {"undone"}
    assert not DedupeMerged.objects.exists()
    # The duplicates are duplicates again, and the finder sees them.
    assert [g.key for g in selectors.duplicates_find()] == [
        "ann@example.com",
        "bob@example.com",
    ]


def test_a_run_is_undone_once(customer, other_customer):
    world(customer, other_customer)
    run_command("--apply")
    run = DedupeRun.objects.get()
    run_command("--undo", str(run.pk))

    with pytest.raises(CommandError, match=f"Run {run.pk} was already undone"):
        run_command("--undo", str(run.pk))
    undo = DedupeRun.objects.get(kind="undo")
    with pytest.raises(CommandError, match="only a merge run can be undone"):
        run_command("--undo", str(undo.pk))


def test_a_group_that_cannot_be_restored_fails_alone_and_can_be_retried(customer, other_customer):
    people = world(customer, other_customer)
    before = snapshot()
    run_command("--apply")
    run = DedupeRun.objects.get()
    # Since the merge, the merged account was given the membership it had before (which
    # the merge moved to the survivor): restoring that row would collide with it.
    extra = Membership.objects.create(user=people["ann3"], organization=other_customer)

    out, err = run_command("--undo", str(run.pk))

    assert "1 group(s) restored, 1 failed (partially_failed)" in out
    assert "undo of group ann@example.com failed" in err
    assert DedupeJournal.objects.get(email_key="bob@example.com").state == "undone"
    assert DedupeJournal.objects.get(email_key="ann@example.com").state == "merged"
    run.refresh_from_db()
    assert run.undone_at is None

    # Put things back as the merge left them, and the remaining group undoes too.
    extra.delete()
    out, _ = run_command("--undo", str(run.pk))
    assert "1 group(s) restored, 0 failed" in out
    assert snapshot() == before


def test_undo_refuses_a_field_changed_since_the_merge_unless_forced(customer, other_customer):
    people = world(customer, other_customer)
    run_command("--apply")
    run = DedupeRun.objects.get()
    # Usage was re-synced after the merge.
    Quota.objects.filter(user=people["ann"]).update(usage=1000)

    _, err = run_command("--undo", str(run.pk))

    assert "changed their usage since the merge" in err
    assert DedupeJournal.objects.get(email_key="ann@example.com").state == "merged"

    out, _ = run_command("--undo", str(run.pk), "--force")
    assert "1 group(s) restored, 0 failed" in out
    assert Quota.objects.get(user=people["ann"]).usage == people["ann"].pk


def test_undo_gives_moved_tokens_back_to_their_accounts(customer, other_customer):
    people = world(customer, other_customer)
    owners = dict(AuthToken.objects.values_list("digest", "user_id"))

    run_command("--apply", "--delete")
    survivors = {people["ann"].pk, people["bob"].pk, people["bob2"].pk}
    assert set(AuthToken.objects.values_list("user_id", flat=True)) <= survivors
    assert AuthToken.objects.count() == len(owners)
    run_command("--undo", str(DedupeRun.objects.get().pk))

    assert dict(AuthToken.objects.values_list("digest", "user_id")) == owners
    assert User.objects.filter(pk=people["ann2"].pk).exists()
