"""Snapshot jobs through their run rows on real ZFS: due snapshots taken, expired ones
pruned, the base of each replication target spared; the preview command shows it first."""

import datetime as dt

from django.core.management import call_command

from backups_app.zfs import hosts, services, tasks
from backups_app.zfs.models import Dataset, ReplicationJob, SnapshotPolicy, StorageHost
from fleet_app.runs import RunState

from .realzfs import sanoid

NOW = dt.datetime(2024, 3, 6, 12, 30, tzinfo=dt.UTC)


def local_pair(lab, settings, policy):
    host = StorageHost.objects.create(name=f"local-{lab.user}")
    lab.configure(settings, local_hosts=[host.name])
    source = Dataset.objects.create(host=host, name=lab.dataset(lab.source_pool), policy=policy)
    target = Dataset.objects.create(
        host=host, name=f"{lab.target_pool}/{source.name.rsplit('/', 1)[1]}"
    )
    job = ReplicationJob.objects.create(name=f"local-{source.pk}", source=source, target=target)
    return source, target, job


def test_a_snapshot_job_spares_the_targets_base_and_the_preview_says_so(
    db, zfs_lab, settings, capsys
):
    lab = zfs_lab
    policy = SnapshotPolicy.objects.create(name="hourly-2", hourly=2, daily=0, monthly=0)
    source, target, job = local_pair(lab, settings, policy)
    hours = [sanoid(NOW - dt.timedelta(hours=h)) for h in (6, 5, 4)]
    for short in hours:
        lab.snapshot(source.name, short)
    run = services.replication_run_start(job=job, enqueue=False)
    assert tasks.replication_run_execute(run.pk) == RunState.SUCCEEDED
    later = [sanoid(NOW - dt.timedelta(hours=h)) for h in (3, 2)]
    for short in later:
        lab.snapshot(source.name, short)
    lab.zfs("release", job.hold_tag, f"{source.name}@{hours[-1]}")  # the rule alone

    plan = hosts.snapshot_plan_preview(dataset=source, now=NOW)
    assert plan.create == [f"{source.name}@autosnap_2024-03-06_12:30:00_hourly"]
    assert {s.short for s in plan.destroy} == set(hours[:2])
    assert plan.spared == {f"{source.name}@{hours[-1]}": f"base of {target}"}

    call_command("zfs_plan", "--dataset", str(source.pk))
    out = capsys.readouterr().out
    assert f"snapshots of {source.name} on host {source.host.name}" in out
    assert f"destroy  {source.name}@{hours[0]}" in out
    assert f"keep     {source.name}@{hours[-1]} (base of {target})" in out
    assert lab.snapshots(source.name) == hours + later  # the preview changed nothing

    run = services.snapshot_run_start(dataset=source, enqueue=False)
    assert tasks.snapshot_run_execute(run.pk, now=NOW) == RunState.SUCCEEDED
    run.refresh_from_db()
    assert len(run.created) == 1 and len(run.destroyed) == 2 and run.refused == []
    assert lab.snapshots(source.name) == [hours[-1], *later, "autosnap_2024-03-06_12:30:00_hourly"]
    source.refresh_from_db()
    assert source.newest_snapshot == "autosnap_2024-03-06_12:30:00_hourly"
    assert source.snapshot_count == 4


def test_zfs_plan_shows_a_replication_plan_with_its_commands(db, zfs_lab, settings, capsys):
    lab = zfs_lab
    source, target, job = local_pair(lab, settings, None)
    lab.snapshot(source.name, "s1")
    lab.snapshot(source.name, "s2")

    call_command("zfs_plan", "--job", job.name)

    out = capsys.readouterr().out
    assert "plan: full" in out
    assert f"zfs send {source.name}@s1" in out
    assert f"zfs send -I {source.name}@s1 {source.name}@s2" in out
    assert f"zfs receive {target.name}" in out
    assert lab.zfs("list", "-H", "-o", "name", "-r", lab.target_pool).count(target.name) == 0
