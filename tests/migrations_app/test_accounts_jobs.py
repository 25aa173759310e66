"""The dedupe as a Celery job: started from the admin after the plan is shown, executed by a
real worker, undone from the admin; the admin masks credentials in the journal."""

import pytest
from django.urls import reverse
from knox.models import AuthToken

from fleet_app.models import AuditEntry, User
from migrations_app.accounts import selectors, services
from migrations_app.models import DedupeJournal, DedupeRun
from tests.conftest import wait_for
from tests.factories import UserFactory
from tests.migrations_app.accounts_fixtures import give_everything, make_account, snapshot

PLAN = "admin:migrations_app_deduperun_plan"


@pytest.fixture
def root(owner):
    return UserFactory(email="root@example.com", organization=owner, is_superuser=True)


@pytest.fixture
def duplicates(customer):
    survivor = make_account("ann@example.com", login=1, organization=customer)
    other = make_account("ANN@example.com", active=False, joined=900)
    give_everything(other, customer)
    return survivor, other


def test_the_plan_is_shown_before_anything_starts(client, root, duplicates):
    survivor, other = duplicates
    client.force_login(root)

    response = client.get(reverse(PLAN))

    assert response.status_code == 200
    page = response.content.decode()
    assert "1 duplicate group of 2 accounts" in page
    assert f"ann@example.com — keep {survivor.pk} (active)" in page
    assert "ANN@example.com" in page and "1 System.created_by" in page
    assert 'name="digest"' in page and "Merge 1 group" in page
    assert not DedupeRun.objects.exists()


def test_confirming_the_plan_starts_a_job_that_merges_it(
    client, root, duplicates, celery_eager, django_capture_on_commit_callbacks
):
    survivor, other = duplicates
    client.force_login(root)
    digest = client.get(reverse(PLAN)).context["digest"]

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse(PLAN), {"digest": digest, "confirm": "1"})

    run = DedupeRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:migrations_app_deduperun_change", args=[run.pk])
    run.refresh_from_db()
    assert (run.state, run.groups_found, run.groups_merged, run.failed) == ("succeeded", 1, 1, 0)
    assert run.created_by == root
    other.refresh_from_db()
    assert not other.is_active
    assert AuditEntry.objects.filter(action="dedupe.start", actor=root).exists()
    assert AuditEntry.objects.filter(action="user.merge", actor=root).exists()


def test_a_plan_that_changed_since_it_was_shown_is_not_started(client, root, duplicates):
    client.force_login(root)
    digest = client.get(reverse(PLAN)).context["digest"]
    make_account("bob@example.com")
    make_account("Bob@example.com", active=False)

    response = client.post(reverse(PLAN), {"digest": digest, "confirm": "1"})

    assert response.status_code == 200
    assert "The duplicates changed since the plan was shown" in response.content.decode()
    assert response.context["group_count"] == 2
    assert not DedupeRun.objects.exists()


def test_prefer_and_delete_from_the_plan_page(
    client, root, duplicates, celery_eager, django_capture_on_commit_callbacks
):
    survivor, other = duplicates
    client.force_login(root)
    page = client.get(reverse(PLAN), {"prefer": str(other.pk)})
    assert f"keep {other.pk} (preferred)" in page.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse(PLAN),
            {"digest": page.context["digest"], "prefer": str(other.pk), "delete": "1"},
        )

    assert not User.objects.filter(pk=survivor.pk).exists()
    other.refresh_from_db()
    assert other.is_active


def test_only_superusers_dedupe(client, alice, duplicates):
    client.force_login(alice)

    assert client.get(reverse(PLAN)).status_code == 403
    assert client.get(reverse("admin:migrations_app_deduperun_changelist")).status_code == 403


def test_the_undo_action_restores_the_run(
    client, root, duplicates, celery_eager, django_capture_on_commit_callbacks
):
    before = snapshot(ignore=(root.pk,))
    with django_capture_on_commit_callbacks(execute=True):
        run = services.dedupe_run_start(actor=None)
    assert DedupeRun.objects.get(pk=run.pk).state == "succeeded"
    client.force_login(root)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:migrations_app_deduperun_changelist"),
            {"action": "undo", "_selected_action": [run.pk], "confirmed": "yes"},
            follow=True,
        )

    assert "Undo run" in response.content.decode()
    undo = DedupeRun.objects.get(kind="undo")
    assert (undo.state, undo.done, undo.undo_of_id) == ("succeeded", 1, run.pk)
    assert snapshot(ignore=(root.pk,)) == before


def test_the_journal_page_masks_credentials(client, root, duplicates, celery_eager):
    survivor, other = duplicates
    AuthToken.objects.create(user=survivor)
    other.set_password("correct horse battery staple")
    other.save()
    password_hash = other.password
    token_digest = AuthToken.objects.get(user=other).digest
    run = services.dedupe_run_create(
        actor=None,
        plan=selectors.plan_json(selectors.dedupe_plan(selectors.duplicates_find())),
        delete=True,
    )
    services.dedupe_run_process(run=run)
    entry = DedupeJournal.objects.get()
    raw = str(entry.changes)
    assert password_hash in raw and token_digest in raw  # kept whole, for an exact undo
    client.force_login(root)

    page = client.get(
        reverse("admin:migrations_app_dedupejournal_change", args=[entry.pk])
    ).content.decode()

    assert password_hash not in page and token_digest not in page
    assert "***" in page and "ANN@example.com" in page


@pytest.mark.timeout(120)
def test_the_dedupe_job_runs_in_a_real_worker(celery_worker_process, customer):
    survivor = make_account("ann@example.com", login=1, organization=customer)
    others = [make_account(f"{case}@example.com", active=False) for case in ("ANN", "Ann")]
    give_everything(others[0], customer)
    for n in range(3):
        make_account(f"u{n}@example.com")
        make_account(f"U{n}@example.com", active=False)
    before = snapshot()

    run = services.dedupe_run_start(actor=None, queue=celery_worker_process)

    assert wait_for(lambda: DedupeRun.objects.get(pk=run.pk).is_finished, timeout=60)
    run.refresh_from_db()
    assert (run.state, run.phase) == ("succeeded", "merging"), run.error
    assert (run.groups_found, run.groups_merged, run.failed) == (4, 4, 0)
    assert run.checkpoints.count() == 4
    assert not User.objects.filter(pk__in=[u.pk for u in others], is_active=True).exists()
    assert selectors.duplicates_find() == []

    undo = services.dedupe_undo_start(actor=None, run=run, queue=celery_worker_process)

    assert wait_for(lambda: DedupeRun.objects.get(pk=undo.pk).is_finished, timeout=60)
    undo.refresh_from_db()
    assert (undo.state, undo.done) == ("succeeded", 4), undo.error
    assert snapshot() == before
    assert survivor.pk in {a.id for g in selectors.duplicates_find() for a in g.accounts}
