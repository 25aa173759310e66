"""ZFS Celery tasks: thin, keyed on a row id, idempotent, ``acks_late``.

Celery autodiscovers only ``<app>/tasks.py``; this module is listed in ``CELERY_IMPORTS``.
A redelivered task is harmless: a finished run is left alone, a running one plans again
from what the hosts hold, and a divergence fix runs only while its report is ``approved``.
"""

from celery import current_app, shared_task

from . import services

TICK_SECONDS = 60.0


@shared_task(acks_late=True)
def replication_run_execute(run_id: int) -> str:
    return services.replication_run_execute(run_id=run_id)


@shared_task(acks_late=True)
def snapshot_run_execute(run_id: int) -> str:
    return services.snapshot_run_execute(run_id=run_id)


@shared_task(acks_late=True)
def divergence_fix_apply(report_id: int) -> None:
    services.divergence_fix_apply(report_id=report_id)


@shared_task(acks_late=True)
def zfs_tick() -> dict:
    return services.zfs_tick()


# Beat imports CELERY_IMPORTS before it reads its schedule, so the tick is scheduled
# wherever this module is listed, without another settings entry.
current_app.conf.beat_schedule.setdefault(
    "zfs-tick", {"task": "backups_app.zfs.tasks.zfs_tick", "schedule": TICK_SECONDS}
)


@shared_task(acks_late=True)
def storage_host_check(host_id: int) -> dict:
    from ..models_zfs import StorageHost

    return services.storage_host_check(host=StorageHost.objects.get(pk=host_id))


@shared_task(acks_late=True)
def replication_job_assess(job_id: int) -> str:
    from ..models_zfs import ReplicationJob

    return services.replication_job_assess(job=ReplicationJob.objects.get(pk=job_id)).guarantee
