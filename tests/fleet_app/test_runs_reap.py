"""The run reaper: a run no worker has touched for RUN_STALE_HOURS is failed, in every
app's run table; fresh and finished runs are left alone; a late message does nothing."""

import datetime as dt

import pytest
from django.utils import timezone

from fleet_app.runs import RunState, run_claim, run_models, runs_reap
from migrations_app.models import DedupeRun
from tests.factories import RotationRunFactory

pytestmark = pytest.mark.django_db


def _aged(run, hours):
    type(run).objects.filter(pk=run.pk).update(
        updated_at=timezone.now() - dt.timedelta(hours=hours)
    )
    return run


def test_every_apps_run_table_is_covered():
    labels = {model._meta.label for model in run_models()}
    assert {
        "migrations_app.RotationRun",
        "migrations_app.DedupeRun",
        "backups_app.BackupRun",
        "backups_app.RestoreRun",
        "backups_app.ReplicationRun",
    } <= labels


def test_a_run_nobody_touched_for_too_long_is_failed(settings):
    settings.RUN_STALE_HOURS = 6
    lost_pending = _aged(RotationRunFactory(), 7)
    lost_running = _aged(DedupeRun.objects.create(state=RunState.RUNNING), 30)
    slow = _aged(RotationRunFactory(state=RunState.RUNNING), 5)
    finished = _aged(RotationRunFactory(state=RunState.SUCCEEDED), 100)

    reaped = runs_reap()

    assert reaped == {"migrations_app.RotationRun": 1, "migrations_app.DedupeRun": 1}
    for run in (lost_pending, lost_running):
        run.refresh_from_db()
        assert run.state == RunState.FAILED and run.finished_at is not None
        assert "No worker has touched this run for 6 hours" in run.error
    for run, state in ((slow, RunState.RUNNING), (finished, RunState.SUCCEEDED)):
        run.refresh_from_db()
        assert run.state == state and run.error == ""


def test_a_message_arriving_after_the_reaper_changes_nothing(settings):
    settings.RUN_STALE_HOURS = 1
    run = _aged(RotationRunFactory(), 2)
    runs_reap()

    assert run_claim(run) is False
    run.refresh_from_db()
    assert run.state == RunState.FAILED
