"""The beat tick starts due snapshot and replication jobs once, however often it fires."""

import datetime as dt

from django.utils import timezone

from backups_app.zfs import services
from backups_app.zfs.models import (
    Dataset,
    ReplicationJob,
    ReplicationRun,
    SnapshotPolicy,
    SnapshotRun,
    StorageHost,
)


def test_due_jobs_start_once(db, django_capture_on_commit_callbacks):
    host = StorageHost.objects.create(name="h")
    policy = SnapshotPolicy.objects.create(name="p", hourly=24)
    past = timezone.now() - dt.timedelta(minutes=1)
    source = Dataset.objects.create(host=host, name="t/a", policy=policy, next_snapshot_at=past)
    target = Dataset.objects.create(host=host, name="b/a")
    job = ReplicationJob.objects.create(name="j", source=source, target=target, next_run_at=past)
    ReplicationJob.objects.create(
        name="later", source=target, target=source, next_run_at=timezone.now() + dt.timedelta(1)
    )

    with django_capture_on_commit_callbacks() as callbacks:
        assert services.zfs_tick() == {"snapshots": 1, "replications": 1}
        assert services.zfs_tick() == {"snapshots": 0, "replications": 0}

    assert len(callbacks) == 2  # each run is enqueued after its row commits
    assert SnapshotRun.objects.get().dataset == source
    assert ReplicationRun.objects.get().job == job
    job.refresh_from_db()
    assert job.next_run_at > timezone.now() + dt.timedelta(minutes=59)
