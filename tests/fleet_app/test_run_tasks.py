"""One task shape: enqueue by name after commit; claim, run, retry the transient, fail the
row on anything else or when retries run out."""

import pytest
from celery import shared_task
from django.db import OperationalError, transaction

from fleet_app import runs
from migrations_app.models import RotationRun
from tests.factories import RotationRunFactory

CALLS: list[str] = []


def _service(*, run, outcome):
    CALLS.append(outcome)
    if outcome == "boom":
        raise ValueError("the work itself failed")
    if outcome == "blink" and CALLS.count("blink") < 3:
        raise OperationalError("the database blinked")
    if outcome == "down":
        raise OperationalError("the database is down")
    runs.run_finish(run)
    return "done"


@shared_task(
    base=runs.RunTask,
    name="tests.run_tasks.work",
    run_model="migrations_app.RotationRun",
    retry_backoff=False,
    max_retries=3,
)
def work(run_id, outcome="ok"):
    return runs.run_execute(RotationRun, run_id, _service, outcome=outcome)


@pytest.fixture
def eager_retries(celery_eager):
    """Eagerly, each retry runs at once inside the first call; errors are kept on the
    result rather than raised, as a worker would record them."""
    from celery import current_app

    previous = current_app.conf.task_eager_propagates
    current_app.conf.task_eager_propagates = False
    yield
    current_app.conf.task_eager_propagates = previous


@pytest.fixture(autouse=True)
def calls():
    CALLS.clear()
    return CALLS


def _run():
    return RotationRunFactory()


def test_a_task_is_sent_by_name_after_the_commit(celery_eager, transactional_db):
    run = _run()
    with transaction.atomic():
        runs.task_enqueue("tests.run_tasks.work", run.pk)
        assert CALLS == []  # not before the commit
    run.refresh_from_db()
    assert CALLS == ["ok"] and run.state == "succeeded"


def test_an_unknown_task_name_is_refused(celery_eager, transactional_db):
    with pytest.raises(LookupError, match="No task is registered"):
        runs.task_enqueue("tests.run_tasks.nothing")


def test_an_error_of_the_work_fails_the_row_at_once(celery_eager, db):
    run = _run()
    with pytest.raises(ValueError):
        work.apply(args=(run.pk, "boom"), throw=True)
    run.refresh_from_db()
    assert CALLS == ["boom"]
    assert run.state == "failed" and "the work itself failed" in run.error


def test_a_transient_error_is_retried_until_it_passes(eager_retries, db):
    run = _run()
    work.apply(args=(run.pk, "blink"))
    run.refresh_from_db()
    assert CALLS == ["blink"] * 3
    assert run.state == "succeeded"


def test_when_retries_run_out_the_row_is_failed(eager_retries, db):
    run = _run()
    work.apply(args=(run.pk, "down"))
    run.refresh_from_db()
    assert CALLS == ["down"] * 4  # the first try and three retries
    assert run.state == "failed" and "the database is down" in run.error


def test_a_finished_run_delivered_again_does_nothing(celery_eager, db):
    run = _run()
    work.apply(args=(run.pk,))
    work.apply(args=(run.pk,))
    assert CALLS == ["ok"]


FIRST_LOOKUP = """
import os, sys, threading
sys.path.insert(0, os.getcwd())
os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
import django
django.setup()
from fleet_app import runs
start, missed = threading.Barrier(8), []

def look_up():
    start.wait()
    try:
        runs._task("backups_app.cluster_backups.tasks.cluster_backups_prune_recent")
    except LookupError:
        missed.append(1)

threads = [threading.Thread(target=look_up) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(missed))
"""


def test_threads_looking_up_a_task_first_all_find_it():
    """A fresh web process whose threads send a task together (the first uploads after a
    start): each finds it registered, none answers 500 after its commit. A new
    interpreter, so the task modules are not imported yet."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", FIRST_LOOKUP],
        cwd=Path(__file__).resolve().parents[2],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "0", done.stderr[-2000:]
