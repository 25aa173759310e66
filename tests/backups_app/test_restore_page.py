"""The "Restore a backup" pages: pick a backup, read its plan, confirm, follow the restore
(a job with progress); wrong input is a form error; the platform's staff only."""

import pytest
from django.urls import reverse

from backups_app.service_backups import services
from backups_app.service_backups.models import BackupRun, RestoreRun
from fleet_app.models import AuditEntry
from tests.factories import UserFactory

PAGE = reverse("backup-restore")


def _run_url(run) -> str:
    return reverse("backup-restore-run", kwargs={"run_id": run.pk})


@pytest.fixture
def root(db):
    return UserFactory(email="root@example.com", is_superuser=True)


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "conf"
    path.mkdir()
    (path / "app.conf").write_text("good\n")
    return path


@pytest.fixture
def backup(folder, django_capture_on_commit_callbacks):
    service = services.service_create(
        actor=None, name="conf", adapter="directory", config={"path": str(folder)}
    )
    with django_capture_on_commit_callbacks(execute=True):
        run = services.backup_run_start(actor=None, service=service)
    run.refresh_from_db()
    assert run.state == "succeeded"
    return run


def test_a_restore_is_planned_shown_confirmed_and_followed(
    client, root, backup, folder, django_capture_on_commit_callbacks
):
    (folder / "app.conf").write_text("broken\n")
    client.force_login(root)
    page = client.get(PAGE)
    assert f"backup {backup.pk} of" in page.content.decode()

    planned = client.post(PAGE, {"backup": backup.pk, "target": ""})

    plan = RestoreRun.objects.get()
    assert planned.status_code == 302 and planned["Location"] == _run_url(plan)
    assert plan.dry_run
    shown = client.get(_run_url(plan)).content.decode()
    assert "app.conf" in shown and "(where it came from)" in shown
    assert f"Restore backup {backup.pk} of conf" in shown
    assert (folder / "app.conf").read_text() == "broken\n"  # nothing written yet

    with django_capture_on_commit_callbacks(execute=True):
        confirmed = client.post(_run_url(plan))

    restored = RestoreRun.objects.get(dry_run=False)
    assert confirmed.status_code == 302 and confirmed["Location"] == _run_url(restored)
    restored.refresh_from_db()
    assert restored.state == "succeeded" and restored.verified is True
    assert (folder / "app.conf").read_text() == "good\n"
    followed = client.get(_run_url(restored)).content.decode()
    assert 'id="restore-progress" value="100"' in followed
    assert AuditEntry.objects.filter(action="restore_run.start", actor=root).exists()
    # The same plan confirmed again (a second click, a re-sent form) restores nothing more.
    again = client.post(_run_url(plan))
    assert again.status_code == 409
    assert RestoreRun.objects.filter(dry_run=False).count() == 1


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"backup": "999999"}, "Select a valid choice"),
        ({"backup": "not-a-number"}, "Select a valid choice"),
        ({"target": "nonsense"}, "key=value"),
        ({"target": "path=relative/folder"}, "absolute"),
    ],
)
def test_wrong_input_is_a_form_error_and_plans_nothing(client, root, backup, data, says):
    client.force_login(root)

    response = client.post(PAGE, {"backup": backup.pk, **data})

    assert response.status_code == 400
    assert says in response.content.decode()
    assert not RestoreRun.objects.exists()


def test_a_pruned_backup_is_not_offered(client, root, backup):
    BackupRun.objects.filter(pk=backup.pk).update(pruned_at="2026-01-01T00:00:00Z")
    client.force_login(root)

    assert f"backup {backup.pk} of" not in client.get(PAGE).content.decode()
    assert client.post(PAGE, {"backup": backup.pk}).status_code == 400


def test_tenant_staff_are_refused_and_the_operator_is_not(client, root, customer, backup):
    client.force_login(root)
    client.post(PAGE, {"backup": backup.pk})
    plan = RestoreRun.objects.get()
    for role in ("admin", "support", "reader"):
        client.force_login(UserFactory(organization=customer, roles=[role]))
        assert client.get(PAGE).status_code == 403
        assert client.get(_run_url(plan)).status_code == 403
        assert client.post(_run_url(plan)).status_code == 403
    assert RestoreRun.objects.filter(dry_run=False).count() == 0
    client.force_login(UserFactory(organization=None, roles=["operator"]))
    assert client.get(PAGE).status_code == 200


def test_the_pages_run_a_bounded_number_of_queries(
    client, root, backup, django_assert_max_num_queries
):
    client.force_login(root)
    client.post(PAGE, {"backup": backup.pk})
    plan = RestoreRun.objects.get()

    # Session, user, the backups offered (with their services), the latest restores.
    with django_assert_max_num_queries(6):
        assert client.get(PAGE).status_code == 200
    # Session, user, the run with its backup, service and author.
    with django_assert_max_num_queries(4):
        assert client.get(_run_url(plan)).status_code == 200
