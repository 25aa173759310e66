"""Replication jobs through their run rows, on real ZFS over SSH: one run per
(job, dataset), a dead worker's run reaped, refusals naming the permission, divergence
reported and fixed only after a staff approval (audited)."""

import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.utils import timezone

from backups_app.zfs import services, tasks
from backups_app.zfs.models import DivergenceReport, ReplicationRun
from fleet_app.errors import Conflict, InvalidInput
from fleet_app.models import AuditEntry
from fleet_app.runs import RunState, run_claim


def zfs_check() -> tuple[int, str]:
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("zfs_check", stdout=out)
    return exit_.value.code, out.getvalue()


def run_job(rows, **kw):
    run = services.replication_run_start(job=rows.job, enqueue=False, **kw)
    tasks.replication_run_execute(run.pk)
    run.refresh_from_db()
    return run


def test_a_job_runs_full_then_incremental_and_records_its_run(zfs_rows):
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "s1", data=100_000)
    lab.snapshot(rows.source.name, "s2")

    first = run_job(rows)

    assert first.state == RunState.SUCCEEDED, first.error
    assert (first.plan_kind, first.from_snapshot, first.to_snapshot) == ("full", "", "s2")
    assert first.bytes > 100_000 and first.duration_seconds > 0
    assert first.guarantee == "incremental-with-holds"
    assert "full" in first.log and "incremental" in first.log
    rows.job.refresh_from_db()
    assert rows.job.last_success_at is not None and rows.job.last_snapshot == "s2"
    assert rows.job.guarantee == "incremental-with-holds" and rows.job.refusal == ""
    assert lab.userrefs(f"{rows.source.name}@s2") == 1  # held with the job's own tag

    lab.snapshot(rows.source.name, "s3")
    second = run_job(rows)

    assert second.state == RunState.SUCCEEDED
    assert (second.plan_kind, second.from_snapshot, second.to_snapshot) == (
        "incremental",
        "s2",
        "s3",
    )
    assert lab.snapshots(rows.target.name) == ["s1", "s2", "s3"]


def test_one_run_per_job_and_dataset_at_a_time(zfs_rows):
    first = services.replication_run_start(job=zfs_rows.job, enqueue=False)
    with pytest.raises(Conflict, match=f"run {first.pk}"):
        services.replication_run_start(job=zfs_rows.job, enqueue=False)
    # Another dataset of the same (recursive) job may run beside it.
    child = services.replication_run_start(
        job=zfs_rows.job, source_dataset=f"{zfs_rows.source.name}/child", enqueue=False
    )
    assert child.target_dataset == f"{zfs_rows.target.name}/child"


def test_a_run_whose_worker_died_leaves_the_job_re_runnable(zfs_rows, settings):
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "s1")
    dead = services.replication_run_start(job=rows.job, enqueue=False)
    assert run_claim(dead)  # a worker took it, then was killed: the row stays "running"
    settings.ZFS_RUN_STALE_SECONDS = 60
    ReplicationRun.objects.filter(pk=dead.pk).update(
        updated_at=timezone.now() - dt.timedelta(seconds=120)
    )

    again = run_job(rows)

    dead.refresh_from_db()
    assert dead.state == RunState.FAILED and dead.phase == "lost"
    assert "can run again" in dead.error
    assert again.state == RunState.SUCCEEDED
    assert lab.snapshots(rows.target.name) == ["s1"]


def test_a_redelivered_run_completes_once(zfs_rows):
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "s1")
    run = services.replication_run_start(job=rows.job, enqueue=False)
    assert run_claim(run)  # the first delivery claimed it and died before any transfer
    assert tasks.replication_run_execute(run.pk) == RunState.SUCCEEDED
    # A duplicate delivery after it finished is a no-op.
    assert tasks.replication_run_execute(run.pk) == RunState.SUCCEEDED
    assert ReplicationRun.objects.filter(job=rows.job).count() == 1


def test_a_job_without_hold_permission_is_refused_naming_it(zfs_rows, settings):
    rows, lab = zfs_rows, zfs_rows.lab
    settings.ZFS_SSH_KEY_PATH = str(lab.keys["nohold"])
    lab.snapshot(rows.source.name, "s1")

    run = run_job(rows)

    assert run.state == RunState.FAILED and run.phase == "refused"
    assert "lacks the 'hold' permission" in run.error
    assert "zfs-gate: 'zfs hold' is not permitted" in run.error
    rows.job.refresh_from_db()
    assert "'hold'" in rows.job.refusal
    rows.source_host.refresh_from_db()
    assert "hold" in rows.source_host.capabilities["permissions"][rows.source.name]["denied"]
    assert lab.zfs("list", "-H", "-o", "name", "-r", lab.target_pool).count(rows.target.name) == 0


def test_divergence_waits_for_an_approval_then_the_fix_runs(zfs_rows, alice):
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "s1")
    assert run_job(rows).state == RunState.SUCCEEDED
    lab.snapshot(rows.target.name, "local-change", data=0)
    lab.snapshot(rows.source.name, "s2")

    stopped = run_job(rows)

    assert stopped.state == RunState.FAILED and stopped.phase == "diverged"
    report = DivergenceReport.objects.get(job=rows.job)
    assert f"Report {report.pk} awaits" in stopped.error
    assert (report.status, report.last_common) == ("open", "s1")
    assert report.kind == "snapshots_missing"
    assert (report.source_only, report.target_only) == (["s2"], ["local-change"])
    assert [f["kind"] for f in report.fixes] == ["rollback", "rename_aside"]
    assert report.fix("rollback")["commands"] == [f"zfs rollback -r {rows.target.name}@s1"]
    # Stopping again updates the same report rather than piling up copies.
    run_job(rows)
    assert DivergenceReport.objects.filter(job=rows.job).count() == 1
    code, out = zfs_check()
    assert code == 2
    assert f"CRIT: job {rows.job.name}: diverged, report {report.pk} awaits approval" in out

    # Without an approval nothing runs.
    services.divergence_fix_apply(report_id=report.pk, enqueue=False)
    report.refresh_from_db()
    assert report.status == "open"
    assert lab.snapshots(rows.target.name) == ["s1", "local-change"]
    with pytest.raises(InvalidInput):
        services.divergence_approve(report=report, fix="destroy", actor=alice, enqueue=False)

    services.divergence_approve(report=report, fix="rollback", actor=alice, enqueue=False)
    approval = AuditEntry.objects.get(action="zfs.divergence.approve")
    assert approval.actor == alice and approval.after["approved_fix"] == "rollback"
    services.divergence_fix_apply(report_id=report.pk, enqueue=False)

    report.refresh_from_db()
    assert report.status == "applied", report.outcome
    assert report.outcome == f"zfs rollback -r {rows.target.name}@s1"
    assert AuditEntry.objects.filter(action="zfs.divergence.applied").exists()
    rerun = ReplicationRun.objects.filter(job=rows.job, state=RunState.PENDING).get()
    tasks.replication_run_execute(rerun.pk)
    rerun.refresh_from_db()
    assert rerun.state == RunState.SUCCEEDED and rerun.plan_kind == "incremental"
    assert lab.snapshots(rows.target.name) == ["s1", "s2"]
    assert zfs_check()[0] == 0


def test_a_renamed_source_is_followed_once_staff_approve(zfs_rows, alice):
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "s1")
    run_job(rows)
    moved = f"{rows.source.name}-old"
    lab.rename(rows.source.name, moved)

    stopped = run_job(rows)

    report = DivergenceReport.objects.get(job=rows.job)
    assert stopped.phase == "diverged"
    assert report.source_moved_to == moved
    assert "no longer exists" in report.reason
    services.divergence_approve(report=report, fix="retarget", actor=alice, enqueue=False)
    services.divergence_fix_apply(report_id=report.pk, enqueue=False)
    rows.job.refresh_from_db()
    assert rows.job.source.name == moved and rows.job.source.host == rows.source_host
    assert AuditEntry.objects.filter(action="zfs.job.retarget").exists()

    lab.snapshot(moved, "s2")
    rerun = ReplicationRun.objects.get(job=rows.job, state=RunState.PENDING)
    tasks.replication_run_execute(rerun.pk)
    rerun.refresh_from_db()
    assert rerun.state == RunState.SUCCEEDED and rerun.plan_kind == "incremental", (
        rerun.error,
        rerun.log,
    )
    assert lab.snapshots(rows.target.name) == ["s1", "s2"]
