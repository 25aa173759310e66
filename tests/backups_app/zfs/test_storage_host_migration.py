"""Migration 0006 drops the storage host columns that became worker settings and keeps the
rows; going back, it fills those columns in from the settings."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedKey"
BEFORE = [("backups_app", "0005_schedules_on_beat_cleanup")]
AFTER = [("backups_app", "0006_storage_host_settings")]


def migrate(targets):
    """Migrate to ``targets``; the models of that state."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


@pytest.fixture
def at_latest():
    """Whatever the test migrated to, the database ends at the latest migrations."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_migrating_forward_keeps_the_host_rows(at_latest, settings, capsys):
    settings.ZFS_LOCAL_HOSTS = frozenset()
    old = migrate(BEFORE).get_model("backups_app", "StorageHost")
    old.objects.create(
        name="off2",
        address="off2.example",
        port=2299,
        user="ovh3operator",
        host_key=KEY,
        key_path="/etc/cutover/id",
        zfs_path="/usr/bin/touch",
    )
    old.objects.create(name="ovh3", local=True)

    new = migrate(AFTER).get_model("backups_app", "StorageHost")

    rows = new.objects.order_by("name").values_list("name", "address", "port", "user", "host_key")
    assert list(rows) == [
        ("off2", "off2.example", 2299, "ovh3operator", KEY),
        ("ovh3", "", 22, "", ""),
    ]
    columns = {
        c.name
        for c in connection.introspection.get_table_description(
            connection.cursor(), new._meta.db_table
        )
    }
    assert not columns & {"key_path", "zfs_path", "zpool_path", "local"}
    # The host that was local is named: it is not local any more until configured so.
    report = capsys.readouterr().out
    assert "name them in ZFS_LOCAL_HOSTS" in report and report.rstrip().endswith(": ovh3")


@pytest.mark.django_db(transaction=True)
def test_migrating_back_fills_the_columns_from_the_settings(at_latest, settings):
    settings.ZFS_LOCAL_HOSTS = frozenset({"ovh3"})
    settings.ZFS_SSH_KEY_PATH = "/etc/cutover/zfs_ed25519"
    settings.ZFS_BIN, settings.ZPOOL_BIN = "/sbin/zfs", "/sbin/zpool"
    current = migrate(AFTER).get_model("backups_app", "StorageHost")
    current.objects.create(name="off2", address="off2.example", user="op", host_key=KEY)
    current.objects.create(name="ovh3")

    old = migrate(BEFORE).get_model("backups_app", "StorageHost")

    rows = old.objects.order_by("name").values_list("name", "local", "key_path", "zfs_path")
    assert list(rows) == [
        ("off2", False, "/etc/cutover/zfs_ed25519", "/sbin/zfs"),
        ("ovh3", True, "/etc/cutover/zfs_ed25519", "/sbin/zfs"),
    ]
