"""Every step recoverable: a dedupe run whose worker is killed half-way is seen dead at
once (its process is gone) or within DEDUPE_RUN_DEAD_SECONDS (no heartbeat), no longer
blocks another run, and can be undone, restored from its checkpoint or resumed; undo and
restore each return the database to what it was, row by row, in a new process."""

import datetime as dt
import io
import os
import signal
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from fleet_app.models import Quota, User
from migrations_app.accounts import selectors, services
from migrations_app.models import DedupeJournal, DedupeRun, LegacyRole
from tests.migrations_app.accounts_fixtures import give_everything, make_account, snapshot

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="a second process needs PostgreSQL"
)

KILLED_AFTER = 2  # groups merged before the worker dies


@pytest.fixture
def groups(transactional_db, customer, other_customer):
    """Four groups whose accounts own rows of every kind; in each, the active account
    loses to an inactive one with a more recent login that was active on the legacy side,
    so a restore must deactivate before it activates (the e-mail constraints)."""
    made = []
    for n in range(4):
        kept = make_account(f"ann{n}@example.com", login=30)
        other = make_account(f"ANN{n}@example.com", active=False, login=1, legacy=(True, True))
        give_everything(kept, customer, role="member", usage=2)
        give_everything(other, customer, role="admin", usage=3)
        Quota.objects.filter(user=other).update(limit=7)
        LegacyRole.objects.create(
            user=other, organization=other_customer, role="billing", legacy_id=f"l{n}"
        )
        made.append((kept, other))
    return made


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def killed_run() -> DedupeRun:
    """A merge run worked by another process that is killed (SIGKILL) after two groups."""
    plan = selectors.plan_json(selectors.dedupe_plan(selectors.duplicates_find()))
    run = services.dedupe_run_create(actor=None, plan=plan)
    DedupeRun.objects.filter(pk=run.pk).update(chunk_size=1)
    script = (
        "import os, signal\n"
        "from fleet_app.runs import run_claim\n"
        "from migrations_app.accounts import services\n"
        "from migrations_app.models import DedupeRun\n"
        f"run = DedupeRun.objects.get(pk={run.pk})\n"
        "run_claim(run)\n"
        f"for _ in range({KILLED_AFTER}):\n"
        f"    services.dedupe_run_step(run_id={run.pk})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "DATABASE_URL": _database_url(), "CONN_MAX_AGE": "0"}
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    run.refresh_from_db()
    assert (run.state, run.done, run.cursor) == ("running", KILLED_AFTER, KILLED_AFTER)
    return run


def command(*args) -> str:
    out = io.StringIO()
    call_command("dedupe_users", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def in_new_process(*args) -> str:
    """``manage.py dedupe_users …`` in a fresh process: nothing survives in memory."""
    env = {**os.environ, "DATABASE_URL": _database_url(), "CONN_MAX_AGE": "0"}
    done = subprocess.run(
        [sys.executable, "manage.py", "dedupe_users", *args],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def test_a_killed_run_is_seen_dead_at_once_and_blocks_nothing(groups):
    run = killed_run()

    assert services.dedupe_run_is_dead(run)  # its process is gone
    # A new run is not refused: the dead one is failed, saying why.
    extra = make_account("zoe@example.com")
    make_account("ZOE@example.com", active=False)
    command("--apply")
    run.refresh_from_db()
    assert run.state == "failed" and run.phase == "worker died"
    assert "died: no heartbeat since" in run.error
    assert not User.objects.get(pk=extra.pk).email.startswith("merged-")


def test_a_run_without_a_heartbeat_for_a_minute_is_dead(groups, settings):
    plan = selectors.plan_json(selectors.dedupe_plan(selectors.duplicates_find()))
    run = services.dedupe_run_create(actor=None, plan=plan)
    recent = timezone.now() - dt.timedelta(seconds=30)
    DedupeRun.objects.filter(pk=run.pk).update(
        state="running", worker="another-host:1", heartbeat_at=recent
    )
    run.refresh_from_db()

    assert not services.dedupe_run_is_dead(run)
    with pytest.raises(CommandError, match="still running"):
        command("--apply")
    assert services.dedupe_run_is_dead(run, now=recent + dt.timedelta(seconds=61))


def test_undo_after_the_worker_died_restores_every_row_in_a_new_process(groups):
    before = snapshot()
    run = killed_run()
    assert snapshot() != before

    out = in_new_process("--undo", str(run.pk))

    assert f"undid run {run.pk}: {KILLED_AFTER} group(s) restored, 0 failed" in out
    assert snapshot() == before


def test_the_checkpoint_restores_every_row_even_where_e_mails_collide(groups):
    before = snapshot()
    run = killed_run()

    out = in_new_process("--restore", str(run.pk))

    assert f"Run {run.pk}'s checkpoint restored:" in out
    assert snapshot() == before
    run.refresh_from_db()
    assert run.restored_at is not None
    assert set(run.journal.values_list("state", flat=True)) == {DedupeJournal.State.UNDONE}
    with pytest.raises(CommandError, match="already restored"):
        command("--restore", str(run.pk))


def test_a_dead_run_resumes_where_it_stopped(groups):
    run = killed_run()

    out = command("--resume", str(run.pk))

    run.refresh_from_db()
    assert (run.state, run.done, run.failed) == ("succeeded", len(groups), 0)
    assert f"Run {run.pk} resumed: {len(groups)} group(s) merged" in out
    assert run.journal.count() == len(groups)  # none merged twice
    assert selectors.postcheck()["unicode"] == 0
    for kept, other in groups:
        other.refresh_from_db()
        assert other.is_active  # the survivor: the legacy-active account seen last
        assert LegacyRole.objects.filter(user=other, role="billing").exists()
        # Memberships unioned with the stronger role; usage summed, the default kept.
        assert other.memberships.get().role == "admin"
        quota = Quota.objects.get(user=other, resource="systems")
        assert (quota.usage, quota.limit) == (2 + 3, None)
        kept.refresh_from_db()
        assert kept.email == f"merged-{kept.pk}@dedupe.invalid" and not kept.is_active


@pytest.mark.django_db
def test_a_restored_account_whose_e_mail_an_active_one_took_since_stays_inactive():
    ann = make_account("ann@example.com", login=1)
    other = make_account("ANN@example.com", active=False)
    command("--apply")
    run = DedupeRun.objects.get()
    # Since the merge: the survivor was closed and someone registered the address.
    User.objects.filter(pk=ann.pk).update(is_active=False)
    newcomer = make_account("Ann@Example.com")

    out = command("--restore", str(run.pk))

    ann.refresh_from_db()
    other.refresh_from_db()
    assert not ann.is_active and (other.email, other.is_active) == ("ANN@example.com", False)
    assert (
        f"account {ann.pk} <ann@example.com> kept inactive: active account {newcomer.pk} "
        "holds that e-mail now" in out
    )
    assert User.objects.get(pk=newcomer.pk).is_active
