"""Admin of service backups: superusers only; schedules edited and audited; actions."""

import pytest
from django.urls import reverse

from backups_app import service_backups
from backups_app.models import BackupRun, BackupSchedule, RestoreRun, Service
from fleet_app.models import AuditEntry
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def root():
    return UserFactory(email="root@example.com", is_superuser=True)


@pytest.fixture
def service(tmp_path):
    (tmp_path / "conf").mkdir()
    return service_backups.service_create(
        actor=None, name="conf", adapter="directory", config={"path": str(tmp_path / "conf")}
    )


def test_scoped_staff_do_not_see_service_backups(client, alice):
    client.force_login(alice)
    assert client.get(reverse("admin:backups_app_service_changelist")).status_code == 403
    assert client.get(reverse("admin:backups_app_backuprun_changelist")).status_code == 403


def test_a_schedule_is_edited_in_the_admin_and_audited(client, root, service):
    client.force_login(root)
    response = client.post(
        reverse("admin:backups_app_backupschedule_add"),
        {
            "service": service.pk,
            "every_minutes": 720,
            "keep_count": 5,
            "keep_days": 14,
            "enabled": "on",
            "next_run_at_0": "2030-01-01",
            "next_run_at_1": "02:00:00",
        },
    )
    assert response.status_code == 302, response.content
    schedule = BackupSchedule.objects.get()
    assert (schedule.every_minutes, schedule.keep_count, schedule.keep_days) == (720, 5, 14)
    assert AuditEntry.objects.filter(action="backupschedule.create", actor=root).exists()


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
