"""Admin of service backups: superusers only; schedules edited and audited; actions."""

import pytest
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from backups_app.service_backups import schedules, services
from backups_app.service_backups.models import BackupRun, BackupSchedule, RestoreRun, Service
from fleet_app.models import AuditEntry
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def root():
    return UserFactory(email="root@example.com", is_superuser=True)


@pytest.fixture
def service(tmp_path):
    (tmp_path / "conf").mkdir()
    return services.service_create(
        actor=None, name="conf", adapter="directory", config={"path": str(tmp_path / "conf")}
    )


def test_scoped_staff_do_not_see_service_backups(client, alice):
    client.force_login(alice)
    assert client.get(reverse("admin:backups_app_service_changelist")).status_code == 403
    assert client.get(reverse("admin:backups_app_backuprun_changelist")).status_code == 403


def test_scoped_staff_do_not_see_beat_either(client, alice, root):
    client.force_login(alice)
    for name in ("periodictask", "intervalschedule", "crontabschedule", "clockedschedule"):
        url = reverse(f"admin:django_celery_beat_{name}_changelist")
        assert client.get(url).status_code == 403, name
    assert client.get(reverse("admin:django_celery_beat_intervalschedule_add")).status_code == 403
    assert client.get(reverse("admin:backups_app_backupschedule_changelist")).status_code == 403
    client.force_login(root)
    assert (
        client.get(reverse("admin:django_celery_beat_periodictask_changelist")).status_code == 200
    )


def _schedule_form(service, **fields):
    return {"service": service.pk, "keep_count": 5, "keep_days": 14, "enabled": "on", **fields}


def test_a_schedule_is_added_in_the_admin_with_an_interval_and_audited(client, root, service):
    twelve_hours = IntervalSchedule.objects.create(every=12, period=IntervalSchedule.HOURS)
    client.force_login(root)
    page = client.get(reverse("admin:backups_app_backupschedule_add")).content.decode()
    # Beat's own admin, one click away, to add an interval or a crontab.
    assert reverse("admin:django_celery_beat_intervalschedule_add") in page

    response = client.post(
        reverse("admin:backups_app_backupschedule_add"),
        _schedule_form(service, interval=twelve_hours.pk),
    )

    assert response.status_code == 302, response.content
    schedule = BackupSchedule.objects.get()
    assert (schedule.keep_count, schedule.keep_days, schedule.enabled) == (5, 14, True)
    entry = schedule.periodic_task
    assert entry.interval == twelve_hours and entry.enabled
    assert entry.task == "backups_app.tasks.backup_schedule_run"
    audit = AuditEntry.objects.get(action="backupschedule.create", actor=root)
    assert audit.after["timing"] == str(twelve_hours)


def test_a_schedule_needs_an_interval_or_a_crontab_not_both(client, root, service):
    hourly = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    nightly = CrontabSchedule.objects.create(minute="0", hour="3")
    client.force_login(root)
    for timing in ({}, {"interval": hourly.pk, "crontab": nightly.pk}):
        response = client.post(
            reverse("admin:backups_app_backupschedule_add"), _schedule_form(service, **timing)
        )
        assert response.status_code == 200
        assert "Choose an interval or a crontab" in response.content.decode()
    assert not BackupSchedule.objects.exists()
    assert not PeriodicTask.objects.filter(task="backups_app.tasks.backup_schedule_run").exists()


def test_a_schedule_is_edited_and_deleted_in_the_admin_and_its_entry_follows(client, root, service):
    hourly = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    nightly = CrontabSchedule.objects.create(minute="0", hour="3")
    schedule = schedules.backup_schedule_create(actor=None, service=service, timing=hourly)
    url = reverse("admin:backups_app_backupschedule_change", args=[schedule.pk])
    client.force_login(root)
    listing = client.get(reverse("admin:backups_app_backupschedule_changelist"))
    assert listing.status_code == 200 and str(hourly) in listing.content.decode()
    assert f'value="{hourly.pk}" selected' in client.get(url).content.decode()

    response = client.post(url, {"crontab": nightly.pk, "keep_count": 2, "keep_days": 9})

    assert response.status_code == 302, response.content
    schedule.refresh_from_db()
    entry = PeriodicTask.objects.get(pk=schedule.periodic_task_id)
    assert (schedule.keep_count, schedule.keep_days, schedule.enabled) == (2, 9, False)
    assert entry.crontab == nightly and entry.interval is None and not entry.enabled
    audit = AuditEntry.objects.get(action="backupschedule.update", actor=root)
    assert audit.before["enabled"] is True and audit.after["enabled"] is False
    assert audit.after["timing"] == str(nightly)

    response = client.post(
        reverse("admin:backups_app_backupschedule_delete", args=[schedule.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not BackupSchedule.objects.exists()
    assert not PeriodicTask.objects.filter(pk=entry.pk).exists()
    assert AuditEntry.objects.filter(action="backupschedule.delete", actor=root).exists()


def test_a_schedules_entry_is_read_only_in_beats_admin(client, root, service):
    hourly = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    schedule = schedules.backup_schedule_create(actor=None, service=service, timing=hourly)
    entry_url = reverse(
        "admin:django_celery_beat_periodictask_change", args=[schedule.periodic_task_id]
    )
    client.force_login(root)
    assert client.get(entry_url).status_code == 200
    response = client.post(entry_url, {"name": "renamed", "enabled": ""})
    assert response.status_code == 403
    client.post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": "disable_tasks", "_selected_action": [schedule.periodic_task_id]},
    )
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).enabled


def test_beats_admin_changes_are_audited(client, root):
    client.force_login(root)
    response = client.post(
        reverse("admin:django_celery_beat_intervalschedule_add"),
        # The page lists the entries using the interval (an inline, empty when adding).
        {
            "every": 6,
            "period": "hours",
            "periodictask_set-TOTAL_FORMS": 0,
            "periodictask_set-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 302, response.content
    assert AuditEntry.objects.filter(action="intervalschedule.create", actor=root).exists()
    response = client.post(
        reverse("admin:django_celery_beat_crontabschedule_add"),
        {
            **{"minute": "0", "hour": "4", "day_of_month": "*", "month_of_year": "*"},
            **{"day_of_week": "*", "timezone": "Europe/Rome"},
            "periodictask_set-TOTAL_FORMS": 0,
            "periodictask_set-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 302, response.content
    audit = AuditEntry.objects.get(action="crontabschedule.create", actor=root)
    assert audit.after["timezone"] == "Europe/Rome"
    entry = PeriodicTask.objects.create(
        name="cleanup", task="fleet_app.tasks.fleet_prune_history",
        interval=IntervalSchedule.objects.get(every=6),
    )  # fmt: skip
    client.post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": "disable_tasks", "_selected_action": [entry.pk]},
    )
    entry.refresh_from_db()
    assert not entry.enabled
    audit = AuditEntry.objects.get(action="periodictask.disable", actor=root)
    assert (audit.before, audit.after) == ({"enabled": True}, {"enabled": False})


def test_a_service_with_a_bad_configuration_is_refused(client, root):
    client.force_login(root)
    response = client.post(
        reverse("admin:backups_app_service_add"),
        {"name": "bad", "adapter": "directory", "config": '{"path": "relative"}', "enabled": "on"},
    )
    assert response.status_code == 200
    assert "absolute" in response.content.decode()
    assert not Service.objects.filter(name="bad").exists()


def test_back_up_now_and_plan_a_restore_from_the_admin(
    client, root, service, django_capture_on_commit_callbacks
):
    client.force_login(root)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("admin:backups_app_service_changelist"),
            {"action": "back_up_now", "_selected_action": [service.pk]},
        )
    run = BackupRun.objects.get()
    assert run.state == "succeeded" and run.created_by == root
    client.post(
        reverse("admin:backups_app_backuprun_changelist"),
        {"action": "plan_restore", "_selected_action": [run.pk]},
    )
    plan = RestoreRun.objects.get()
    assert plan.dry_run and plan.plan["original_target"] is True
    page = client.get(reverse("admin:backups_app_restorerun_change", args=[plan.pk]))
    assert page.status_code == 200 and "files_overwritten" in page.content.decode()
    assert client.get(reverse("backup-dashboard")).context["services"][0]["drill_overdue"]
