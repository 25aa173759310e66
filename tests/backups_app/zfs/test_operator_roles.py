"""Operator roles on real ZFS over sshd (issue failure 7): a snapshot job on a remote host
needs a snapshot operator's key and names what a pull operator's key lacks, in words; a
monitor-only dataset (the host's own sanoid snapshots it) is only listed, its freshness
read from whatever snapshots are there."""

import io

import pytest
from django.core.management import call_command

from backups_app.zfs import services, tasks
from backups_app.zfs.models import Dataset, SnapshotPolicy, SnapshotRun
from fleet_app.runs import RunState


def snapshot_run(dataset):
    run = services.snapshot_run_start(dataset=dataset, enqueue=False)
    tasks.snapshot_run_execute(run.pk)
    run.refresh_from_db()
    return run


def zfs_check() -> str:
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("zfs_check", "--verbose-checks", stdout=out)
    return out.getvalue()


def test_a_pull_operators_key_cannot_run_snapshot_jobs_and_is_told_why(zfs_rows, settings):
    rows, lab = zfs_rows, zfs_rows.lab
    policy = SnapshotPolicy.objects.create(name="hourly", hourly=2, daily=0, monthly=0)
    Dataset.objects.filter(pk=rows.source.pk).update(policy=policy)
    rows.source.refresh_from_db()

    refused = snapshot_run(rows.source)

    assert refused.state == RunState.FAILED and refused.phase == "refused"
    for command in ("snapshot", "destroy", "mount"):
        assert f"lacks the '{command}' permission" in refused.error
    assert "a snapshot operator needs send,hold,release,snapshot,destroy,mount" in refused.error
    assert "zfs-gate: 'zfs snapshot' is not permitted" in refused.error
    assert lab.snapshots(rows.source.name) == []

    settings.ZFS_SSH_KEY_PATH = str(lab.keys["snapshot"])
    done = snapshot_run(rows.source)

    assert done.state == RunState.SUCCEEDED, done.error
    (taken,) = lab.snapshots(rows.source.name)
    assert taken.startswith("autosnap_") and taken.endswith("_hourly")


def test_monitor_only_reads_freshness_from_snapshots_whoever_made_them(zfs_rows):
    rows, lab = zfs_rows, zfs_rows.lab
    policy = SnapshotPolicy.objects.create(
        name="their-sanoid", hourly=48, daily=0, monthly=0, monitor_only=True
    )
    Dataset.objects.filter(pk=rows.source.pk).update(policy=policy)
    rows.source.refresh_from_db()
    lab.snapshot(rows.source.name, "made-by-their-sanoid")

    run = snapshot_run(rows.source)  # the pull operator's key suffices: nothing is taken

    assert run.state == RunState.SUCCEEDED, run.error
    assert lab.snapshots(rows.source.name) == ["made-by-their-sanoid"]
    rows.source.refresh_from_db()
    assert rows.source.newest_snapshot == "made-by-their-sanoid"
    assert SnapshotRun.objects.get(pk=run.pk).created == []
    assert f"OK: dataset {rows.source}: newest snapshot made-by-their-sanoid is" in zfs_check()
