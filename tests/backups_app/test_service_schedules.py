"""Schedules claimed once per due time; retention by count and age per schedule; the
backup and restore commands."""

import datetime as dt

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from backups_app import service_backups
from backups_app.models import BackupRun, BackupSchedule, RestoreRun
from backups_app.storage import get_store

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def service(tmp_path):
    root = tmp_path / "conf"
    root.mkdir()
    (root / "a.txt").write_text("a")
    return service_backups.service_create(
        actor=None, name="conf", adapter="directory", config={"path": str(root)}
    )


def test_a_due_schedule_starts_one_backup_and_moves_on(service):
    now = timezone.now()
    schedule = BackupSchedule.objects.create(service=service, every_minutes=60, next_run_at=now)
    assert service_backups.backup_schedules_tick(now=now) == 1
    # The same tick again (a second beat, a redelivery) finds nothing due.
    assert service_backups.backup_schedules_tick(now=now) == 0
    schedule.refresh_from_db()
    assert schedule.next_run_at == now + dt.timedelta(minutes=60)
    run = BackupRun.objects.get()
    assert run.schedule == schedule and run.state == "succeeded"
    assert service_backups.backup_schedules_tick(now=now + dt.timedelta(minutes=61)) == 1


def test_a_disabled_schedule_or_service_is_not_run(service):
    now = timezone.now()
    BackupSchedule.objects.create(service=service, next_run_at=now, enabled=False)
    assert service_backups.backup_schedules_tick(now=now) == 0
    BackupSchedule.objects.create(service=service, next_run_at=now)
    service.enabled = False
    service.save()
    assert service_backups.backup_schedules_tick(now=now) == 0


def test_retention_keeps_the_newest_by_count_and_drops_the_old(service):
    schedule = BackupSchedule.objects.create(
        service=service, keep_count=2, keep_days=30, next_run_at=timezone.now()
    )
    runs = [
        service_backups.backup_run_start(actor=None, service=service, schedule=schedule)
        for _ in range(4)
    ]
    # Each successful scheduled run applies retention: two archives are left.
    kept = BackupRun.objects.filter(pruned_at__isnull=True).order_by("pk")
    assert [r.pk for r in kept] == [runs[2].pk, runs[3].pk]
    assert sorted(get_store().keys()) == sorted(r.storage_key for r in kept)
    assert BackupRun.objects.count() == 4, "pruned runs stay as history"

    # Age: everything older than keep_days goes, except the latest good backup.
    BackupRun.objects.update(created_at=timezone.now() - dt.timedelta(days=40))
    pruned = service_backups.backup_retention_apply(schedule=schedule)
    assert pruned == [runs[2].pk]
    assert list(get_store().keys()) == [BackupRun.objects.get(pk=runs[3].pk).storage_key]


def test_a_pruned_backup_cannot_be_restored(service):
    schedule = BackupSchedule.objects.create(service=service, keep_count=1)
    first = service_backups.backup_run_start(actor=None, service=service, schedule=schedule)
    service_backups.backup_run_start(actor=None, service=service, schedule=schedule)
    first.refresh_from_db()
    assert first.pruned_at is not None
    with pytest.raises(service_backups.InvalidInput, match="removed by retention"):
        service_backups.restore_plan(backup=first, target=None)


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
