"""Backup schedules of services: their beat entries and the backups beat starts.

A schedule's timing is a django-celery-beat entry kept in step by
``backup_schedule_periodic_task_sync``; beat sends ``backup_schedule_run`` at each due
time, which claims it with a conditional UPDATE, so a message sent twice starts one backup.
"""

import datetime as dt
import json
import logging
import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from fleet_app import services as fleet
from fleet_app.errors import InvalidInput
from fleet_app.models import User

from .models import BackupRun, BackupSchedule, Service
from .services import backup_run_start

logger = logging.getLogger(__name__)

SCHEDULE_TASK = "backups_app.tasks.backup_schedule_run"

# A schedule's timing: beat's interval or crontab row, which staff pick or edit in the admin.
ScheduleTiming = IntervalSchedule | CrontabSchedule


def _schedule_state(schedule: BackupSchedule) -> dict[str, Any]:
    """A schedule as the audit log shows it: its own fields and its timing."""
    state = fleet.audit_snapshot(schedule)
    task = schedule.periodic_task
    state["timing"] = str(task.scheduler) if task.scheduler else None
    state["periodic_task_enabled"] = task.enabled
    return state


def backup_schedule_periodic_task_sync(
    *, schedule: BackupSchedule, timing: ScheduleTiming | None = None, deleted: bool = False
) -> PeriodicTask | None:
    """Make the beat entry of ``schedule`` match it: the only code that writes those entries.

    - a schedule not saved yet is saved here, after its entry (which it points at) and
      before the entry names it (the entry's argument is the schedule's id); ``timing`` is
      required then;
    - a saved schedule's entry takes ``timing`` when given, and mirrors ``enabled``;
    - ``deleted``: the schedule's row is gone, its entry goes too.

    Entries are saved through the model, so beat's change marker moves and a running
    ``DatabaseScheduler`` reloads them.
    """
    if deleted:
        if schedule.periodic_task_id:
            PeriodicTask.objects.get(pk=schedule.periodic_task_id).delete()
        return None
    if schedule.pk is None:
        if timing is None:
            raise InvalidInput("A schedule needs an interval or a crontab.")
        schedule.periodic_task = PeriodicTask.objects.create(
            name=f"backup schedule {uuid.uuid4().hex}",
            task=SCHEDULE_TASK,
            enabled=False,
            **{"interval" if isinstance(timing, IntervalSchedule) else "crontab": timing},
        )
        schedule.save()
    task = schedule.periodic_task
    if timing is not None:
        task.interval = timing if isinstance(timing, IntervalSchedule) else None
        task.crontab = timing if isinstance(timing, CrontabSchedule) else None
    task.name = f"backup schedule {schedule.pk}"
    task.task = SCHEDULE_TASK
    task.args = json.dumps([schedule.pk])
    task.description = f"Back up service {schedule.service.name} (schedule {schedule.pk})."
    task.enabled = schedule.enabled
    try:
        task.save()
    except ValidationError as error:
        raise InvalidInput("; ".join(error.messages)) from None
    return task


@transaction.atomic
def backup_schedule_create(
    *,
    actor: User | None,
    service: Service,
    timing: ScheduleTiming,
    keep_count: int = 7,
    keep_days: int = 30,
    enabled: bool = True,
) -> BackupSchedule:
    """A schedule of ``service`` and its beat entry, which sends ``backup_schedule_run``."""
    if timing.pk is None:
        timing.save()
    schedule = BackupSchedule(
        service=service, keep_count=keep_count, keep_days=keep_days, enabled=enabled
    )
    backup_schedule_periodic_task_sync(schedule=schedule, timing=timing)
    fleet.audit_record(
        actor=actor, action="backupschedule.create", obj=schedule, after=_schedule_state(schedule)
    )
    return schedule


@transaction.atomic
def backup_schedule_update(
    *,
    actor: User | None,
    schedule: BackupSchedule,
    timing: ScheduleTiming | None = None,
    keep_count: int | None = None,
    keep_days: int | None = None,
    enabled: bool | None = None,
) -> BackupSchedule:
    """Change a schedule's timing, retention or ``enabled``; its beat entry follows."""
    current = (
        BackupSchedule.objects.select_for_update(of=("self",))
        .select_related("service", "periodic_task__interval", "periodic_task__crontab")
        .get(pk=schedule.pk)
    )
    before = _schedule_state(current)
    changes = {
        name: value
        for name, value in (
            ("keep_count", keep_count),
            ("keep_days", keep_days),
            ("enabled", enabled),
        )
        if value is not None and getattr(current, name) != value
    }
    for name, value in changes.items():
        setattr(current, name, value)
    if changes:
        current.save(update_fields=list(changes))
    if timing is not None and timing.pk is None:
        timing.save()
    backup_schedule_periodic_task_sync(schedule=current, timing=timing)
    after = _schedule_state(current)
    if after != before:
        fleet.audit_record(
            actor=actor, action="backupschedule.update", obj=current, before=before, after=after
        )
    return current


@transaction.atomic
def backup_schedule_delete(*, actor: User | None, schedule: BackupSchedule) -> None:
    """Delete a schedule and its beat entry; its backups stay (``schedule`` emptied)."""
    fleet.audit_record(
        actor=actor,
        action="backupschedule.delete",
        obj=schedule,
        before=_schedule_state(schedule),
    )
    schedule.delete()
    backup_schedule_periodic_task_sync(schedule=schedule, deleted=True)


def _schedule_due(schedule: BackupSchedule, now: dt.datetime) -> bool:
    """Whether a due time of the schedule's timing has come since its last start.

    An interval counts as due half an interval early: the worker's clock for one message
    is not beat's (queue latency varies), and a duplicate of one due time arrives well
    within half an interval of the first. A crontab's due times are fixed instants, which
    need no such margin.
    """
    if schedule.last_run_at is None:
        return True
    task = schedule.periodic_task
    if task.interval is not None:
        every = task.interval.schedule.run_every
        return now - schedule.last_run_at >= every / 2
    if task.crontab is not None:
        crontab = task.crontab.schedule
        crontab.nowfun = lambda: now.astimezone(crontab.tz)
        return crontab.is_due(schedule.last_run_at)[0]
    return False


def backup_schedule_run(
    *, schedule_id: int, now: dt.datetime | None = None, queue: str | None = None
) -> BackupRun | None:
    """Start the backup of a due schedule (beat sends this at each due time).

    Once per due time: the start is claimed by moving ``last_run_at`` on from the value
    read, in the transaction that writes the run, so two copies of one message (two beats,
    a redelivery) start one backup, and a copy that arrives after the start finds the
    schedule not due. None when nothing was started.
    """
    now = now or timezone.now()
    schedule = (
        BackupSchedule.objects.select_related(
            "service", "periodic_task__interval", "periodic_task__crontab"
        )
        .filter(pk=schedule_id)
        .first()
    )
    if schedule is None or not schedule.enabled or not schedule.service.enabled:
        return None
    if not _schedule_due(schedule, now):
        logger.info("backup schedule %s: not due, a copy of a message already run", schedule.pk)
        return None
    with transaction.atomic():
        claimed = (
            BackupSchedule.objects.filter(pk=schedule.pk, last_run_at=schedule.last_run_at)
            if schedule.last_run_at is not None
            else BackupSchedule.objects.filter(pk=schedule.pk, last_run_at__isnull=True)
        ).update(last_run_at=now)
        if not claimed:
            return None
        return backup_run_start(
            actor=None, service=schedule.service, schedule=schedule, queue=queue
        )
