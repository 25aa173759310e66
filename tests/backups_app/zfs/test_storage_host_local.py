"""A storage host is local only when the workers' settings name it in ZFS_LOCAL_HOSTS; any
other host must be reachable over SSH, and a run on one that is not fails saying why."""

import pytest
from django.core.exceptions import ValidationError

from backups_app.zfs import hosts, services, tasks
from backups_app.zfs.models import Dataset, SnapshotPolicy, StorageHost
from backups_app.zfs.runner import HostUnreachable, LocalRunner, SshRunner
from fleet_app.runs import RunState

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedKey"


def test_a_host_is_local_only_when_named_in_zfs_local_hosts(db, settings):
    host = StorageHost.objects.create(name="ovh3")

    settings.ZFS_LOCAL_HOSTS = frozenset()
    assert not host.is_local
    settings.ZFS_LOCAL_HOSTS = frozenset({"ovh3-old", "ovh"})
    assert not host.is_local
    settings.ZFS_LOCAL_HOSTS = frozenset({"off2", "ovh3"})
    assert host.is_local
    assert isinstance(hosts.host_runner(host), LocalRunner)


def test_a_host_not_named_local_is_reached_over_ssh(db, settings):
    settings.ZFS_LOCAL_HOSTS = frozenset({"ovh3"})
    settings.ZFS_SSH_KEY_PATH = "/etc/cutover/zfs_ed25519"
    host = StorageHost.objects.create(name="off2", address="off2.example", user="op", host_key=KEY)

    with hosts.host_runner(host) as runner:
        assert isinstance(runner, SshRunner)
        assert runner.label == "op@off2.example:22"


def test_a_host_not_named_local_needs_an_address_a_user_and_its_host_key(db, settings):
    settings.ZFS_LOCAL_HOSTS = frozenset({"ovh3"})
    StorageHost(name="ovh3").full_clean()
    StorageHost(name="off2", address="off2.example", user="op", host_key=KEY).full_clean()
    for missing in ("address", "user", "host_key"):
        fields = {"address": "off2.example", "user": "op", "host_key": KEY, missing: ""}
        with pytest.raises(ValidationError, match="ZFS_LOCAL_HOSTS"):
            StorageHost(name="off2", **fields).full_clean()


def test_a_run_on_a_host_neither_local_nor_reachable_fails_saying_why(db, settings):
    # E.g. a host that was local before ZFS_LOCAL_HOSTS existed and is not named there.
    settings.ZFS_LOCAL_HOSTS = frozenset()
    host = StorageHost.objects.create(name="ovh3")
    policy = SnapshotPolicy.objects.create(name="p", hourly=2)
    dataset = Dataset.objects.create(host=host, name="tank/data", policy=policy)

    run = services.snapshot_run_start(dataset=dataset, enqueue=False)
    assert tasks.snapshot_run_execute(run.pk) == RunState.FAILED

    run.refresh_from_db()
    assert "ovh3: not named in ZFS_LOCAL_HOSTS" in run.error


def test_no_ssh_runner_is_built_without_the_workers_key(db, settings):
    settings.ZFS_LOCAL_HOSTS = frozenset()
    settings.ZFS_SSH_KEY_PATH = ""
    host = StorageHost.objects.create(name="off2", address="off2.example", user="op", host_key=KEY)

    with pytest.raises(HostUnreachable, match="ZFS_SSH_KEY_PATH is not set"):
        hosts.host_runner(host)
