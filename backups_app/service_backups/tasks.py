"""Service backup tasks: thin, keyed on a row id, idempotent, ``acks_late``.

The names are the ones these tasks were released under (``backups_app.tasks``): beat
rows and queued messages name them. A run task claims its row, calls the service, retries
transient errors with backoff and fails the row on anything else (``fleet_app.runs``).
"""

from celery import shared_task

from fleet_app.runs import RunTask, run_execute

from . import restore, schedules, services
from .models import BackupRun, RestoreRun


@shared_task(
    base=RunTask, name="backups_app.tasks.backup_run_execute", run_model="backups_app.BackupRun"
)
def backup_run_execute(run_id: int, **kwargs) -> str | None:
    return run_execute(BackupRun, run_id, services.backup_run_execute, **kwargs)


@shared_task(
    base=RunTask, name="backups_app.tasks.restore_run_execute", run_model="backups_app.RestoreRun"
)
def restore_run_execute(run_id: int, **kwargs) -> str | None:
    return run_execute(RestoreRun, run_id, restore.restore_run_execute, **kwargs)


@shared_task(name="backups_app.tasks.backup_schedule_run", acks_late=True)
def backup_schedule_run(schedule_id: int) -> int | None:
    """Sent by beat at each due time of a schedule (its django-celery-beat entry): start its
    backup. A copy of the message for a due time already served starts nothing."""
    run = schedules.backup_schedule_run(schedule_id=schedule_id)
    return run.pk if run is not None else None


@shared_task(name="backups_app.tasks.restore_drills_start", acks_late=True)
def restore_drills_start() -> int:
    """Run by beat (``BACKUP_DRILL_EVERY_HOURS``): a restore drill of every service."""
    return len(restore.restore_drills_start())
