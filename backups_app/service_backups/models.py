"""Service backups: the services Cutover backs up, their schedules, backup and restore runs.

An archive lives in the blob store (``backups_app.storage``) under the run's
``storage_key``; the key and SHA-256 are written only once the archive is complete.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from fleet_app.runs import Run


class Service(models.Model):
    """A service Cutover backs up: a PostgreSQL database, a directory tree, its own data.

    ``config`` holds what the adapter needs (a database name, a path), never a secret: a
    database password is read from the environment variable named in ``password_env``.
    """

    class Adapter(models.TextChoices):
        POSTGRES = "postgres", "PostgreSQL database (pg_dump/pg_restore)"
        DIRECTORY = "directory", "Directory tree (tar)"
        CUTOVER_DATA = "cutover_data", "Cutover's own data (portable JSON)"

    name = models.SlugField(max_length=64, unique=True)
    adapter = models.CharField(max_length=32, choices=Adapter.choices)
    config = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class BackupSchedule(models.Model):
    """When to back a service up and how many of its scheduled backups to keep.

    The timing is a django-celery-beat ``PeriodicTask`` (an interval or a crontab, edited by
    staff in the admin) that sends ``backup_schedule_run`` with this schedule's id. It is
    written only by ``schedules.backup_schedule_periodic_task_sync``, which mirrors
    ``enabled`` onto it. ``last_run_at`` is claimed with a conditional UPDATE, so a message
    sent twice (two beats, a redelivery) for one due time starts one backup, never two.
    """

    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="schedules")
    # PROTECT: the task is removed with its schedule by the service, never on its own.
    periodic_task = models.OneToOneField(
        PeriodicTask, on_delete=models.PROTECT, related_name="backup_schedule", editable=False
    )
    keep_count = models.PositiveIntegerField(default=7, help_text="Keep at most this many.")
    keep_days = models.PositiveIntegerField(
        default=30, help_text="Delete scheduled backups older than this many days."
    )
    enabled = models.BooleanField(default=True)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)

    def __str__(self) -> str:
        return f"{self.service} ({self.periodic_task.scheduler})"


class BackupRun(Run):
    """One backup of a service: the archive's key, size and SHA-256, and its manifest.

    The manifest is what verify compares a restore with (row counts per table, file
    checksums, object counts per model), taken from the same snapshot as the archive.
    """

    task_name = "backups_app.tasks.backup_run_execute"

    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="backup_runs")
    schedule = models.ForeignKey(
        BackupSchedule, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    storage_key = models.CharField(max_length=512, blank=True)
    size = models.PositiveBigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    # Set when retention removed the archive; the row stays as history.
    pruned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # "The latest good backup of a service" (drills, restore by service).
            models.Index(fields=["service", "state", "-id"], name="bkp_run_svc_state_idx"),
        ]

    def __str__(self) -> str:
        return f"backup run {self.pk} of {self.service_id} ({self.state})"


class RestoreRun(Run):
    """A restore of a backup run to its original target or another one, or a drill.

    ``dry_run`` runs only the plan (what would be written where); a drill restores to a
    scratch target, verifies and drops the target. ``verify`` holds the adapter's report.
    """

    task_name = "backups_app.tasks.restore_run_execute"

    class Purpose(models.TextChoices):
        RESTORE = "restore", "Restore"
        DRILL = "drill", "Restore drill"

    backup = models.ForeignKey(BackupRun, on_delete=models.PROTECT, related_name="restores")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="restore_runs")
    purpose = models.CharField(max_length=16, choices=Purpose.choices, default=Purpose.RESTORE)
    target = models.JSONField(default=dict, blank=True)
    dry_run = models.BooleanField(default=False)
    plan = models.JSONField(default=dict, blank=True)
    verify = models.JSONField(default=dict, blank=True)
    verified = models.BooleanField(null=True, blank=True)

    class Meta:
        indexes = [
            # "The latest good drill of a service" (the drill-overdue flag).
            models.Index(
                fields=["service", "-finished_at"],
                condition=Q(purpose="drill", verified=True),
                name="bkp_restore_good_drill_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} run {self.pk} of backup {self.backup_id} ({self.state})"
