"""The ZFS run tasks take the one run shape: a run whose work raises something unforeseen
is failed at once with the reason on its row (not left "running" for the reaper), and a
transient error leaves the row to the retry."""

import pytest
from celery.exceptions import Retry
from django.db import OperationalError

from backups_app.zfs import services, tasks
from backups_app.zfs.models import Dataset, SnapshotPolicy, StorageHost
from fleet_app.runs import RunState


@pytest.fixture
def snapshot_run(db, settings):
    settings.ZFS_LOCAL_HOSTS = frozenset({"ovh3"})
    host = StorageHost.objects.create(name="ovh3")
    policy = SnapshotPolicy.objects.create(name="p", hourly=2)
    dataset = Dataset.objects.create(host=host, name="tank/data", policy=policy)
    return services.snapshot_run_start(dataset=dataset, enqueue=False)


def test_an_unforeseen_error_fails_the_run_saying_why(snapshot_run, monkeypatch):
    def broken(**kwargs):
        raise KeyError("pool")

    monkeypatch.setattr(services, "snapshot_plan_preview", broken)

    with pytest.raises(KeyError):
        tasks.snapshot_run_execute(snapshot_run.pk)

    snapshot_run.refresh_from_db()
    assert snapshot_run.state == RunState.FAILED
    assert snapshot_run.error == "KeyError: 'pool'"
    assert snapshot_run.finished_at is not None


def test_a_transient_error_is_retried_and_does_not_fail_the_run(snapshot_run, monkeypatch):
    def blinked(**kwargs):
        raise OperationalError("the server closed the connection unexpectedly")

    monkeypatch.setattr(services, "snapshot_plan_preview", blinked)

    # Run in-process, Celery hands the retry it schedules to the caller.
    with pytest.raises(Retry):
        tasks.snapshot_run_execute.apply(args=[snapshot_run.pk], throw=True)

    snapshot_run.refresh_from_db()
    assert snapshot_run.state == RunState.RUNNING and not snapshot_run.error


def test_a_finished_run_delivered_again_is_left_alone(snapshot_run):
    # A first delivery finished it; the broker delivers the message again.
    type(snapshot_run).objects.filter(pk=snapshot_run.pk).update(state=RunState.SUCCEEDED)

    assert tasks.snapshot_run_execute(snapshot_run.pk) == RunState.SUCCEEDED
    snapshot_run.refresh_from_db()
    assert snapshot_run.started_at is None
