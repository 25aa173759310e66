"""Storage hosts lose the columns the workers executed or used as credentials (key_path,
zfs_path, zpool_path) and the ``local`` flag: all of them are the workers' settings now
(ZFS_BIN, ZPOOL_BIN, ZFS_SSH_BIN, ZFS_SSH_KEY_PATH, ZFS_LOCAL_HOSTS). The rows are kept.

Going forward, a host that was local and is not named in ZFS_LOCAL_HOSTS is reported, since
from now on it is reached over SSH (or not at all). Going back, the columns are filled in
from those settings, so the old check constraint holds again.
"""

import sys

from django.conf import settings
from django.db import migrations


def local_hosts_report(apps, schema_editor):
    StorageHost = apps.get_model("backups_app", "StorageHost")
    names = StorageHost.objects.filter(local=True).values_list("name", flat=True)
    missing = sorted(set(names) - set(settings.ZFS_LOCAL_HOSTS))
    if missing:
        sys.stdout.write(
            "\n  These storage hosts were local; name them in ZFS_LOCAL_HOSTS on the web and "
            f"worker processes, or they are reached over SSH: {', '.join(missing)}\n"
        )


def columns_from_settings(apps, schema_editor):
    StorageHost = apps.get_model("backups_app", "StorageHost")
    StorageHost.objects.update(
        key_path=settings.ZFS_SSH_KEY_PATH,
        zfs_path=settings.ZFS_BIN,
        zpool_path=settings.ZPOOL_BIN,
    )
    StorageHost.objects.filter(name__in=settings.ZFS_LOCAL_HOSTS).update(local=True)


class Migration(migrations.Migration):
    dependencies = [
        ("backups_app", "0005_schedules_on_beat_cleanup"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="storagehost",
            name="zfs_host_remote_complete",
        ),
        # Between the constraint and the columns: going back, the columns are re-added,
        # filled in, and only then is the constraint checked.
        migrations.RunPython(local_hosts_report, columns_from_settings, elidable=True),
        migrations.RemoveField(
            model_name="storagehost",
            name="key_path",
        ),
        migrations.RemoveField(
            model_name="storagehost",
            name="local",
        ),
        migrations.RemoveField(
            model_name="storagehost",
            name="zfs_path",
        ),
        migrations.RemoveField(
            model_name="storagehost",
            name="zpool_path",
        ),
    ]
