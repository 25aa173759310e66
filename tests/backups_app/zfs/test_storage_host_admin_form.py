"""The storage host admin form offers nothing the workers execute or log in with: whatever
is posted to it, the commands built for the host come from the workers' settings."""

import pytest
from django.urls import reverse

from backups_app.zfs import hosts
from backups_app.zfs.models import StorageHost
from fleet_app.models import User

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedKey"


@pytest.fixture
def root(db):
    return User.objects.create_superuser(email="root@example.com", password="x" * 12)


@pytest.fixture
def workers(settings):
    """Worker settings that differ from every default, so the argv shows where each came from."""
    settings.ZFS_BIN = "/opt/cutover/sbin/zfs"
    settings.ZPOOL_BIN = "/opt/cutover/sbin/zpool"
    settings.ZFS_SSH_BIN = "/opt/cutover/bin/ssh"
    settings.ZFS_SSH_KEY_PATH = "/etc/cutover/zfs_ed25519"
    settings.ZFS_LOCAL_HOSTS = frozenset({"ovh3"})
    return settings


@pytest.fixture
def remote(db):
    return StorageHost.objects.create(
        name="off2", address="off2.example", port=22, user="ovh3operator", host_key=KEY
    )


def form_fields(client, url) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200
    return set(response.context["adminform"].form.fields)


def test_the_add_and_change_forms_offer_only_where_to_connect(client, root, remote):
    client.force_login(root)
    add = form_fields(client, reverse("admin:backups_app_storagehost_add"))
    change = form_fields(client, reverse("admin:backups_app_storagehost_change", args=[remote.pk]))

    assert add == {"name", "address", "port", "user", "host_key"}
    # The name decides locality (ZFS_LOCAL_HOSTS): set once, read-only afterwards.
    assert change == {"address", "port", "user", "host_key"}
    page = client.get(reverse("admin:backups_app_storagehost_add")).content.decode()
    for name in ("zfs_path", "zpool_path", "key_path", "local"):
        assert f'name="{name}"' not in page


@pytest.mark.parametrize("name", ["off2", "ovh3"], ids=["remote", "local"])
def test_posting_a_binary_path_changes_nothing_the_workers_run(client, root, workers, name):
    host = StorageHost.objects.create(
        name=name, address="old.example", port=22, user="ovh3operator", host_key=KEY
    )
    client.force_login(root)
    response = client.post(
        reverse("admin:backups_app_storagehost_change", args=[host.pk]),
        {
            "name": name,
            "address": "off2.example",
            "port": 2299,
            "user": "ovh3operator",
            "host_key": KEY,
            "zfs_path": "/usr/bin/touch",
            "zpool_path": "/usr/bin/touch",
            "key_path": "/home/tenant/id_ed25519",
            "local": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    host.refresh_from_db()
    assert (host.address, host.port) == ("off2.example", 2299)  # the form was saved
    assert host.name == name

    with hosts.host_runner(host) as runner:
        zfs = runner.zfs_argv(["list", "-H"])
        zpool = runner.zpool_argv(["list", "-H"])

    assert "/usr/bin/touch" not in " ".join(zfs + zpool)
    assert "/home/tenant/id_ed25519" not in zfs
    if name == "ovh3":
        assert zfs == [workers.ZFS_BIN, "list", "-H"]
        assert zpool == [workers.ZPOOL_BIN, "list", "-H"]
    else:
        # ssh from the settings, the settings' key, then the remote command: ZFS_BIN.
        assert zfs[0] == workers.ZFS_SSH_BIN
        assert zfs[zfs.index("-i") + 1] == workers.ZFS_SSH_KEY_PATH
        assert zfs[-2:] == ["--", f"{workers.ZFS_BIN} list -H"]
        assert zpool[-1] == f"{workers.ZPOOL_BIN} list -H"
