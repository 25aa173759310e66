"""Backup tasks: thin wrappers around ``service_backups``, keyed on a run id, idempotent.

Transient database errors are retried with backoff; anything else fails the run, so a
run row never stays "running" because its task raised.
"""

import logging
import random

from celery import shared_task
from django.db import OperationalError

from . import service_backups, sweep

logger = logging.getLogger(__name__)

MAX_RETRIES = 5
BACKOFF_CAP = 120


def _backoff(retries: int) -> float:
    base = min(BACKOFF_CAP, 2 ** (retries + 1))
    return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not a secret


def _run(task, execute, fail, run_id: int) -> None:
    try:
        execute(run_id=run_id)
    except OperationalError as error:
        if task.request.retries >= MAX_RETRIES or task.request.is_eager:
            fail(run_id=run_id, error=f"database error: {error}")
            raise
        raise task.retry(exc=error, countdown=_backoff(task.request.retries)) from error
    except Exception as error:
        fail(run_id=run_id, error=f"{type(error).__name__}: {error}")
        raise


@shared_task(bind=True, acks_late=True, max_retries=MAX_RETRIES)
def backup_run_execute(self, run_id: int) -> None:
    _run(self, service_backups.backup_run_execute, service_backups.backup_run_fail, run_id)


@shared_task(bind=True, acks_late=True, max_retries=MAX_RETRIES)
def restore_run_execute(self, run_id: int) -> None:
    _run(self, service_backups.restore_run_execute, service_backups.restore_run_fail, run_id)


@shared_task(acks_late=True)
def backup_schedule_run(schedule_id: int) -> int | None:
    """Sent by beat at each due time of a schedule (its django-celery-beat entry): start its
    backup. A copy of the message for a due time already served starts nothing."""
    run = service_backups.backup_schedule_run(schedule_id=schedule_id)
    return run.pk if run is not None else None


@shared_task(acks_late=True)
def restore_drills_start() -> int:
    """Run by beat (``BACKUP_DRILL_EVERY_HOURS``): a restore drill of every service."""
    return len(service_backups.restore_drills_start())


@shared_task
def storage_sweep() -> int:
    """Run by beat every six hours: orphan objects and unfinished uploads past the grace
    period are removed (backups_app/sweep.py); returns how many."""
    result = sweep.storage_sweep(apply=True)
    return len(result.orphans) - len(result.failed) + len(result.unfinished)
