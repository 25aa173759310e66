"""Backup schedules: every schedule has its beat entry now (0004); the old timing goes."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("backups_app", "0004_schedules_on_beat"),
    ]

    operations = [
        migrations.AlterField(
            model_name="backupschedule",
            name="periodic_task",
            field=models.OneToOneField(
                editable=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="backup_schedule",
                to="django_celery_beat.periodictask",
            ),
        ),
        migrations.RemoveIndex(
            model_name="backupschedule",
            name="bkp_sched_due_idx",
        ),
        migrations.RemoveField(
            model_name="backupschedule",
            name="every_minutes",
        ),
        migrations.RemoveField(
            model_name="backupschedule",
            name="next_run_at",
        ),
        migrations.AlterField(
            model_name="backupschedule",
            name="service",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="schedules",
                to="backups_app.service",
            ),
        ),
    ]
