"""The directory (tar) and Cutover-data (portable JSON) adapters: backup, restore to
another target, verify, drills; the staff API answers 202 and a real worker runs it."""

import pytest
from django.urls import reverse

from backups_app.service_backups import restore, services
from backups_app.service_backups.adapters import get_adapter
from backups_app.service_backups.models import BackupRun
from fleet_app.models import Organization
from tests.conftest import wait_for
from tests.factories import UserFactory, make_system


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "share"
    (root / "etc" / "nested").mkdir(parents=True)
    (root / "etc" / "a.conf").write_text("alpha\n")
    (root / "etc" / "nested" / "b.bin").write_bytes(bytes(range(256)) * 100)
    (root / "top.txt").write_text("top")
    return root


@pytest.fixture
def folder_service(db, tree):
    return services.service_create(
        actor=None, name="share", adapter="directory", config={"path": str(tree)}
    )


def _backup(service) -> BackupRun:
    run = services.backup_run_start(actor=None, service=service)
    run.refresh_from_db()
    assert run.state == "succeeded", run.error + run.log
    return run


@pytest.mark.django_db(transaction=True)
def test_a_folder_round_trips_into_another_folder(folder_service, tmp_path):
    backup = _backup(folder_service)
    assert sorted(backup.manifest["files"]) == ["etc/a.conf", "etc/nested/b.bin", "top.txt"]
    target = tmp_path / "restored"
    plan = restore.restore_plan(backup=backup, target={"path": str(target)})
    assert plan["target_exists"] is False and plan["files"] == 3
    run = restore.restore_run_start(
        actor=None, backup=backup, target={"path": str(target)}, dry_run=False
    )
    run.refresh_from_db()
    assert run.state == "succeeded" and run.verified
    assert (target / "etc" / "nested" / "b.bin").read_bytes() == bytes(range(256)) * 100

    # A changed or missing file fails verify and says which.
    (target / "top.txt").write_text("tampered")
    (target / "etc" / "a.conf").unlink()
    result = get_adapter("directory").verify(
        folder_service.config, {"path": str(target)}, backup.manifest, lambda line: None
    )
    assert result["ok"] is False
    by_name = {c["check"]: c for c in result["checks"]}
    assert by_name["missing files"]["found"] == ["etc/a.conf"]
    assert by_name["differing files"]["found"] == ["top.txt"]


@pytest.mark.django_db(transaction=True)
def test_a_folder_drill_uses_a_scratch_folder_and_removes_it(folder_service):
    _backup(folder_service)
    drill = restore.restore_drill_start(service=folder_service)
    drill.refresh_from_db()
    assert drill.state == "succeeded" and drill.verified
    from pathlib import Path

    assert not Path(drill.target["path"]).exists()


def test_a_path_outside_the_target_cannot_be_written(tmp_path):
    """The tar filter refuses members that would land outside the target folder."""
    import io
    import tarfile

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(tarfile.OutsideDestinationError):
        get_adapter("directory").restore(
            {}, {"path": str(tmp_path / "target")}, archive, lambda line: None
        )
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("needs_postgresql")
def test_cutover_data_is_portable_and_its_drill_loads_it_into_a_scratch_database(customer):
    for n in range(2):
        make_system(customer, name=f"cluster-{n}")
    service = services.service_create(actor=None, name="cutover-data", adapter="cutover_data")
    backup = _backup(service)
    models = backup.manifest["models"]
    assert models["fleet_app.system"] == 2
    assert models["fleet_app.organization"] == Organization.objects.count() == 3
    drill = restore.restore_drill_start(service=service)
    drill.refresh_from_db()
    assert drill.state == "succeeded", drill.error + drill.log
    assert drill.verified is True
    found = {c["check"]: c["found"] for c in drill.verify["checks"]}
    assert found["objects of fleet_app.system"] == 2
    from tests.backups_app.conftest import pg_database_exists

    assert not pg_database_exists(drill.target["scratch_database"])


def test_the_staff_api_answers_202_and_a_real_worker_runs_the_backup(
    celery_worker_process, client, tree, settings
):
    service = services.service_create(
        actor=None, name="share", adapter="directory", config={"path": str(tree)}
    )
    root = UserFactory(email="root@example.com", is_superuser=True)
    client.force_login(root)
    response = client.post(
        reverse("backup-run-list"), {"service": "share"}, content_type="application/json"
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["state"] == "pending"
    assert body["url"].endswith(f"/api/backups/backup-runs/{body['id']}/")
    assert response["Location"] == body["url"]
    # The request only queued it; the worker process does the work.
    from controlplane.celery import app

    app.send_task(
        "backups_app.tasks.backup_run_execute", args=(body["id"],), queue=celery_worker_process
    )
    assert wait_for(lambda: BackupRun.objects.get(pk=body["id"]).is_finished, timeout=60), (
        "the worker did not finish the run"
    )
    run = client.get(body["url"]).json()
    assert run["state"] == "succeeded" and run["sha256"] and run["service"] == service.name

    restore = client.post(
        reverse("restore-run-list"),
        {"backup": body["id"], "target": {"path": str(tree.parent / "restored")}},
        content_type="application/json",
    )
    assert restore.status_code == 200, "a dry run is the default: the plan, nothing queued"
    assert restore.json()["plan"]["files"] == 3


def test_service_backups_are_for_superusers_only(client, alice):
    client.force_login(alice)
    assert client.get(reverse("backup-run-list")).status_code == 403
    assert client.post(reverse("backup-run-list"), {"service": "x"}).status_code == 403
