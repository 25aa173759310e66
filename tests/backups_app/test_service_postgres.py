"""A real pg_dump of the test database → restore into another database → verify; the
dry-run plan first; a drill that restores, verifies and drops its scratch database; a
drill that detects a corrupted backup."""

import hashlib

import psycopg
import pytest
from django.db import connection

from backups_app.service_backups import restore, services
from backups_app.service_backups.models import BackupRun, RestoreRun
from backups_app.service_backups.selectors import services_overview
from backups_app.storage import get_store
from tests.backups_app.conftest import pg_database_exists
from tests.factories import make_system

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("needs_postgresql")]


@pytest.fixture
def service():
    return services.service_create(
        actor=None,
        name="cutover-db",
        adapter="postgres",
        config={"alias": "default", "test_query": "SELECT count(*) FROM fleet_app_system"},
    )


@pytest.fixture
def backup(service, customer):
    for n in range(3):
        make_system(customer, name=f"cluster-{n}")
    run = services.backup_run_start(actor=None, service=service)
    run.refresh_from_db()
    assert run.state == "succeeded", run.error + run.log
    return run


def _count(database: str, table: str) -> int:
    params = connection.settings_dict
    with psycopg.connect(
        host=params["HOST"], port=params["PORT"], user=params["USER"], dbname=database
    ) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608


def test_a_backup_stores_a_custom_format_dump_with_its_checksum(backup):
    stored = b"".join(get_store().read(backup.storage_key))
    assert stored[:5] == b"PGDMP"  # pg_dump's custom format
    assert len(stored) == backup.size
    assert hashlib.sha256(stored).hexdigest() == backup.sha256
    # Row counts from the dump's own snapshot.
    assert backup.manifest["tables"]["public.fleet_app_system"] == 3
    assert backup.storage_key == f"services/cutover-db/{backup.pk}.dump"
    assert (backup.done, backup.total, backup.phase) == (2, 2, "done")


def test_restore_into_another_database_after_a_dry_run(backup, scratch_database):
    target = {"database": scratch_database}
    plan = restore.restore_run_start(actor=None, backup=backup, target=target, dry_run=True)
    assert plan.state == "succeeded" and plan.dry_run
    assert plan.plan["database_exists"] is False
    assert plan.plan["original_target"] is False
    assert plan.plan["rows"] == sum(backup.manifest["tables"].values())
    assert not pg_database_exists(scratch_database), "a dry run writes nothing"

    run = restore.restore_run_start(actor=None, backup=backup, target=target, dry_run=False)
    run.refresh_from_db()
    assert run.state == "succeeded", run.error + run.log
    assert run.verified is True
    assert _count(scratch_database, "fleet_app_system") == 3
    checks = {c["check"]: c for c in run.verify["checks"]}
    assert checks["rows in public.fleet_app_system"]["found"] == 3
    assert checks["test query: SELECT count(*) FROM fleet_app_system"]["found"] == [3]

    # Restoring again into the now existing database replaces what it holds.
    replan = restore.restore_plan(backup=backup, target=target)
    assert replan["database_exists"] is True
    assert replan["tables_replaced"]["public.fleet_app_system"] == 3
    again = restore.restore_run_start(actor=None, backup=backup, target=target, dry_run=False)
    again.refresh_from_db()
    assert again.state == "succeeded" and again.verified
    assert _count(scratch_database, "fleet_app_system") == 3


def test_verify_fails_when_the_restored_rows_differ(backup, service, scratch_database):
    run = restore.restore_run_start(
        actor=None, backup=backup, target={"database": scratch_database}, dry_run=False
    )
    run.refresh_from_db()
    assert run.verified
    params = connection.settings_dict
    with psycopg.connect(
        host=params["HOST"], port=params["PORT"], user=params["USER"], dbname=scratch_database
    ) as conn:
        conn.execute("DELETE FROM fleet_app_auditentry")
    from backups_app.service_backups.adapters import get_adapter

    result = get_adapter("postgres").verify(
        service.config, {"database": scratch_database}, backup.manifest, lambda line: None
    )
    assert result["ok"] is False
    failed = [c for c in result["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == ["rows in public.fleet_app_auditentry"]


def test_a_drill_restores_verifies_and_drops_its_scratch_database(backup, service):
    drill = restore.restore_drill_start(service=service)
    drill.refresh_from_db()
    assert drill.purpose == "drill" and drill.backup_id == backup.pk
    assert drill.state == "succeeded", drill.error + drill.log
    assert drill.verified is True
    assert drill.target["database"].startswith("cutover_drill_")
    assert not pg_database_exists(drill.target["database"])
    [row] = services_overview()
    assert row["drill_overdue"] is False and row["last_drill"] == drill


def test_a_drill_detects_a_corrupted_backup(backup, service):
    # One byte flipped in the stored archive, its length unchanged.
    store = get_store()
    data = bytearray(b"".join(store.read(backup.storage_key)))
    data[len(data) // 2] ^= 0x01
    writer = store.writer(backup.storage_key)
    writer.write(bytes(data))
    writer.commit()

    drill = restore.restore_drill_start(service=service)
    drill.refresh_from_db()
    assert drill.state == "failed"
    assert drill.verified is False
    assert "ChecksumMismatch" in drill.error and "is corrupt" in drill.error
    assert not pg_database_exists(drill.target["database"])
    [row] = services_overview()
    assert row["drill_overdue"] is True
    assert row["last_drill"] == drill and row["last_good_drill_at"] is None


def test_a_failed_backup_leaves_no_archive(service, settings):
    settings.BACKUP_PG_BIN_DIR = "/nonexistent"
    run = services.backup_run_start(actor=None, service=service)
    run.refresh_from_db()
    assert run.state == "failed"
    assert "FileNotFoundError" in run.error
    assert get_store().keys() == []
    assert not RestoreRun.objects.exists()
    assert BackupRun.objects.get().storage_key == ""
