"""ZFS Celery tasks: thin, keyed on a row id, idempotent, ``acks_late``.

A run task claims its row, calls the service, retries transient errors with backoff and
fails the row on anything else (``fleet_app.runs``). A redelivered task is harmless: a
finished run is left alone, a running one plans again from what the hosts hold, and a
divergence fix runs only while its report is ``approved``. Beat sends ``zfs_tick`` every
minute (``CELERY_BEAT_SCHEDULE`` in the settings).
"""

from celery import shared_task

from fleet_app.runs import RunTask, run_execute

from . import hosts, services
from .models import ReplicationJob, ReplicationRun, SnapshotRun, StorageHost


@shared_task(
    base=RunTask,
    name="backups_app.zfs.tasks.replication_run_execute",
    run_model="backups_app.ReplicationRun",
)
def replication_run_execute(run_id: int, **kwargs) -> str | None:
    return run_execute(ReplicationRun, run_id, services.replication_run_execute, **kwargs)


@shared_task(
    base=RunTask,
    name="backups_app.zfs.tasks.snapshot_run_execute",
    run_model="backups_app.SnapshotRun",
)
def snapshot_run_execute(run_id: int, **kwargs) -> str | None:
    return run_execute(SnapshotRun, run_id, services.snapshot_run_execute, **kwargs)


@shared_task(name="backups_app.zfs.tasks.divergence_fix_apply", acks_late=True)
def divergence_fix_apply(report_id: int) -> None:
    services.divergence_fix_apply(report_id=report_id)


@shared_task(name="backups_app.zfs.tasks.zfs_tick", acks_late=True)
def zfs_tick() -> dict:
    return services.zfs_tick()


@shared_task(name="backups_app.zfs.tasks.storage_host_check", acks_late=True)
def storage_host_check(host_id: int) -> dict:
    return hosts.storage_host_check(host=StorageHost.objects.get(pk=host_id))


@shared_task(name="backups_app.zfs.tasks.replication_job_assess", acks_late=True)
def replication_job_assess(job_id: int) -> str:
    return hosts.replication_job_assess(job=ReplicationJob.objects.get(pk=job_id)).guarantee
