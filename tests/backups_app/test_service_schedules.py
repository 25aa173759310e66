"""Schedules: their beat entries (django-celery-beat) kept in step, seen by a real
DatabaseScheduler, one backup per due time; retention by count and age per schedule; the
backup and restore commands."""

import datetime as dt
import json
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from backups_app.service_backups import restore, schedules, services
from backups_app.service_backups.models import BackupRun, BackupSchedule, RestoreRun
from backups_app.storage import get_store
from controlplane.celery import app as celery_app
from fleet_app.errors import InvalidInput
from fleet_app.models import AuditEntry

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def service(tmp_path):
    root = tmp_path / "conf"
    root.mkdir()
    (root / "a.txt").write_text("a")
    return services.service_create(
        actor=None, name="conf", adapter="directory", config={"path": str(root)}
    )


@pytest.fixture
def daily():
    return IntervalSchedule.objects.create(every=1, period=IntervalSchedule.DAYS)


def _beat_entry(schedule: BackupSchedule) -> PeriodicTask:
    return PeriodicTask.objects.get(pk=schedule.periodic_task_id)


def test_a_schedule_gets_a_beat_entry_that_sends_its_run(service, daily):
    schedule = schedules.backup_schedule_create(
        actor=None, service=service, timing=daily, keep_count=3
    )

    entry = _beat_entry(schedule)
    assert entry.task == "backups_app.tasks.backup_schedule_run"
    assert json.loads(entry.args) == [schedule.pk]
    assert entry.interval == daily and entry.crontab is None and entry.enabled
    assert AuditEntry.objects.get(action="backupschedule.create").after["timing"] == str(daily)


def test_the_beat_entry_follows_edits_and_enabled(service, daily):
    schedule = schedules.backup_schedule_create(actor=None, service=service, timing=daily)
    nightly = CrontabSchedule.objects.create(minute="30", hour="2")

    schedules.backup_schedule_update(
        actor=None, schedule=schedule, timing=nightly, keep_days=10, enabled=False
    )

    entry = _beat_entry(schedule)
    assert entry.crontab == nightly and entry.interval is None and not entry.enabled
    schedule.refresh_from_db()
    assert (schedule.keep_days, schedule.enabled) == (10, False)
    audit = AuditEntry.objects.get(action="backupschedule.update")
    assert audit.before["timing"] == str(daily) and audit.after["timing"] == str(nightly)

    schedules.backup_schedule_update(actor=None, schedule=schedule, enabled=True)
    assert _beat_entry(schedule).enabled and _beat_entry(schedule).crontab == nightly


def test_the_beat_entry_goes_with_its_schedule_and_the_backups_stay(service, daily):
    schedule = schedules.backup_schedule_create(actor=None, service=service, timing=daily)
    run = services.backup_run_start(actor=None, service=service, schedule=schedule)
    entry_pk = schedule.periodic_task_id

    schedules.backup_schedule_delete(actor=None, schedule=schedule)

    assert not BackupSchedule.objects.exists()
    assert not PeriodicTask.objects.filter(pk=entry_pk).exists()
    run.refresh_from_db()
    assert run.schedule is None and run.state == "succeeded"
    assert AuditEntry.objects.filter(action="backupschedule.delete").exists()


def _scheduler() -> DatabaseScheduler:
    """Beat's scheduler as ``celery beat`` makes it: the project's app, its settings."""
    celery_app.loader.import_default_modules()
    assert celery_app.conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    return DatabaseScheduler(app=celery_app)


def test_beat_lists_the_schedule_and_finds_it_due_once_an_interval_passed(service, daily):
    schedule = schedules.backup_schedule_create(actor=None, service=service, timing=daily)
    name = _beat_entry(schedule).name

    entries = _scheduler().schedule
    # The static entries of CELERY_BEAT_SCHEDULE are there too.
    assert {
        "fleet-prune-history",
        "fleet-runs-reap",
        "backups-restore-drills",
        "backups-storage-sweep",
        "zfs-tick",
    } <= set(entries)
    entry = entries[name]
    assert entry.task == "backups_app.tasks.backup_schedule_run"
    assert entry.args == [schedule.pk]
    # Just created: the first backup is one interval away.
    assert entry.is_due().is_due is False

    # Beat last sent it 25 hours ago.
    PeriodicTask.objects.filter(name=name).update(
        last_run_at=timezone.now() - dt.timedelta(hours=25)
    )
    assert _scheduler().schedule[name].is_due().is_due is True


def test_beat_leaves_out_a_disabled_schedule(service, daily):
    schedule = schedules.backup_schedule_create(
        actor=None, service=service, timing=daily, enabled=False
    )
    assert _beat_entry(schedule).name not in _scheduler().schedule


def test_a_due_time_sent_twice_starts_one_backup(service, daily):
    schedule = schedules.backup_schedule_create(actor=None, service=service, timing=daily)
    PeriodicTask.objects.filter(pk=schedule.periodic_task_id).update(
        last_run_at=timezone.now() - dt.timedelta(days=2)
    )
    scheduler = _scheduler()
    entry = scheduler.schedule[_beat_entry(schedule).name]
    assert entry.is_due().is_due

    # Beat sends the entry's message (run in-process here); a second beat, or the broker
    # redelivering it, sends the same due time again.
    scheduler.apply_async(entry, advance=False)
    scheduler.apply_async(entry, advance=False)

    run = BackupRun.objects.get()
    assert run.schedule == schedule and run.state == "succeeded"
    schedule.refresh_from_db()
    assert schedule.last_run_at is not None


def test_the_next_due_time_starts_the_next_backup(service, daily):
    schedule = schedules.backup_schedule_create(actor=None, service=service, timing=daily)
    now = timezone.now()

    assert schedules.backup_schedule_run(schedule_id=schedule.pk, now=now) is not None
    # A copy an hour later (a redelivery): the same due time.
    later = now + dt.timedelta(hours=1)
    assert schedules.backup_schedule_run(schedule_id=schedule.pk, now=later) is None
    # Beat's next send comes a day later, a little early by the worker's clock.
    next_day = now + dt.timedelta(days=1, seconds=-3)
    assert schedules.backup_schedule_run(schedule_id=schedule.pk, now=next_day) is not None
    assert BackupRun.objects.count() == 2


def test_a_crontab_schedule_runs_once_per_due_time(service):
    nightly = CrontabSchedule.objects.create(minute="0", hour="2")
    schedule = schedules.backup_schedule_create(actor=None, service=service, timing=nightly)
    due = dt.datetime(2030, 1, 1, 2, 0, tzinfo=dt.UTC)

    assert schedules.backup_schedule_run(schedule_id=schedule.pk, now=due) is not None
    for copy_at in (due + dt.timedelta(seconds=4), due + dt.timedelta(hours=20)):
        assert schedules.backup_schedule_run(schedule_id=schedule.pk, now=copy_at) is None
    tomorrow = due + dt.timedelta(days=1, seconds=1)
    assert schedules.backup_schedule_run(schedule_id=schedule.pk, now=tomorrow) is not None
    assert BackupRun.objects.count() == 2


def test_two_copies_at_the_same_instant_start_one_backup(service, daily):
    schedule = schedules.backup_schedule_create(actor=None, service=service, timing=daily)
    barrier = threading.Barrier(2)
    now = timezone.now()
    started = []

    def deliver():
        try:
            barrier.wait()
            started.append(schedules.backup_schedule_run(schedule_id=schedule.pk, now=now))
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len([run for run in started if run is not None]) == 1
    assert BackupRun.objects.count() == 1


def test_a_disabled_schedule_or_service_is_not_run(service, daily):
    now = timezone.now()
    off = schedules.backup_schedule_create(actor=None, service=service, timing=daily, enabled=False)
    assert schedules.backup_schedule_run(schedule_id=off.pk, now=now) is None
    on = schedules.backup_schedule_create(actor=None, service=service, timing=daily)
    service.enabled = False
    service.save()
    assert schedules.backup_schedule_run(schedule_id=on.pk, now=now) is None
    assert schedules.backup_schedule_run(schedule_id=999_999, now=now) is None
    assert not BackupRun.objects.exists()


def test_retention_keeps_the_newest_by_count_and_drops_the_old(service, daily):
    schedule = schedules.backup_schedule_create(
        actor=None, service=service, timing=daily, keep_count=2, keep_days=30
    )
    runs = [
        services.backup_run_start(actor=None, service=service, schedule=schedule) for _ in range(4)
    ]
    # Each successful scheduled run applies retention: two archives are left.
    kept = BackupRun.objects.filter(pruned_at__isnull=True).order_by("pk")
    assert [r.pk for r in kept] == [runs[2].pk, runs[3].pk]
    assert sorted(get_store().keys()) == sorted(r.storage_key for r in kept)
    assert BackupRun.objects.count() == 4, "pruned runs stay as history"

    # Age: everything older than keep_days goes, except the latest good backup.
    BackupRun.objects.update(created_at=timezone.now() - dt.timedelta(days=40))
    pruned = services.backup_retention_apply(schedule=schedule)
    assert pruned == [runs[2].pk]
    assert list(get_store().keys()) == [BackupRun.objects.get(pk=runs[3].pk).storage_key]


def test_a_pruned_backup_cannot_be_restored(service, daily):
    schedule = schedules.backup_schedule_create(
        actor=None, service=service, timing=daily, keep_count=1
    )
    first = services.backup_run_start(actor=None, service=service, schedule=schedule)
    services.backup_run_start(actor=None, service=service, schedule=schedule)
    first.refresh_from_db()
    assert first.pruned_at is not None
    with pytest.raises(InvalidInput, match="removed by retention"):
        restore.restore_plan(backup=first, target=None)


def test_the_backup_command_runs_a_backup(service, capsys):
    call_command("backup", "conf")
    out = capsys.readouterr().out
    run = BackupRun.objects.get()
    assert f"Backup run {run.pk} succeeded" in out and run.sha256 in out


def test_the_backup_command_names_the_known_services(service):
    with pytest.raises(CommandError, match=r"No service 'nope' \(services: conf\)"):
        call_command("backup", "nope")


def test_the_restore_command_plans_first_and_applies_on_request(service, tmp_path, capsys):
    call_command("backup", "conf")
    run = BackupRun.objects.get()
    target = tmp_path / "elsewhere"
    call_command("restore", str(run.pk), "--target", f"path={target}")
    out = capsys.readouterr().out
    assert '"files": 1' in out and "Dry run: nothing was written" in out
    assert not target.exists()
    call_command("restore", str(run.pk), "--target", f"path={target}", "--apply")
    assert "succeeded and verified" in capsys.readouterr().out
    assert (target / "a.txt").read_text() == "a"
    assert RestoreRun.objects.filter(dry_run=False, verified=True).count() == 1


def test_the_restore_command_refuses_a_bad_target(service):
    call_command("backup", "conf")
    run = BackupRun.objects.get()
    with pytest.raises(CommandError, match="key=value"):
        call_command("restore", str(run.pk), "--target", "nonsense")
    with pytest.raises(CommandError, match="absolute 'path'"):
        call_command("restore", str(run.pk), "--target", "path=relative")
    with pytest.raises(CommandError, match="There is no backup run 999"):
        call_command("restore", "999")
