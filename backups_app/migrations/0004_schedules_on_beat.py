"""Backup schedules take their timing from django-celery-beat.

Each schedule gets a PeriodicTask every ``every_minutes`` that sends
``backups_app.tasks.backup_schedule_run`` with its id, first due at its ``next_run_at``;
0005 then drops ``every_minutes``, ``next_run_at`` and the index of the old beat tick (in
its own transaction: PostgreSQL does not alter a table with pending constraint checks).
"""

import datetime as dt
import json

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone

TASK = "backups_app.tasks.backup_schedule_run"


def schedules_to_beat(apps, schema_editor):
    BackupSchedule = apps.get_model("backups_app", "BackupSchedule")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    schedules = list(BackupSchedule.objects.select_related("service"))
    for schedule in schedules:
        every = max(1, schedule.every_minutes)
        interval = IntervalSchedule.objects.filter(every=every, period="minutes").first()
        if interval is None:
            interval = IntervalSchedule.objects.create(every=every, period="minutes")
        task = PeriodicTask.objects.create(
            name=f"backup schedule {schedule.pk}",
            task=TASK,
            interval=interval,
            args=json.dumps([schedule.pk]),
            kwargs="{}",
            description=f"Back up service {schedule.service.name} (schedule {schedule.pk}).",
            enabled=schedule.enabled,
            # Beat sends an interval entry one interval after its last run: first at the
            # schedule's next_run_at, as before.
            last_run_at=(
                schedule.next_run_at - dt.timedelta(minutes=every) if schedule.enabled else None
            ),
        )
        BackupSchedule.objects.filter(pk=schedule.pk).update(periodic_task=task)
    if schedules:
        # A running beat reloads its entries when this marker moves.
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def schedules_from_beat(apps, schema_editor):
    BackupSchedule = apps.get_model("backups_app", "BackupSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    seconds = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1, "microseconds": 1e-6}
    for schedule in BackupSchedule.objects.select_related("periodic_task__interval"):
        task = schedule.periodic_task
        if task is None:
            continue
        every = 24 * 60
        if task.interval is not None:
            every = max(1, round(task.interval.every * seconds[task.interval.period] / 60))
        BackupSchedule.objects.filter(pk=schedule.pk).update(
            every_minutes=every, periodic_task=None
        )
        task.delete()


class Migration(migrations.Migration):
    dependencies = [
        ("backups_app", "0003_zfs"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.AddField(
            model_name="backupschedule",
            name="periodic_task",
            field=models.OneToOneField(
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="backup_schedule",
                to="django_celery_beat.periodictask",
            ),
        ),
        migrations.RunPython(schedules_to_beat, schedules_from_beat),
    ]
