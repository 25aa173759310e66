"""The ways a real tree diverges (issue failures 1–4 and 6), on zfs-fuse over sshd: each
gets its own report and fixes, a fix touches its one dataset, and after approval the tree
is in sync with no unrelated dataset resent (bytes counted per dataset)."""

import io

import pytest
from django.core.management import call_command

from backups_app.zfs import services, tasks
from backups_app.zfs.models import DivergenceReport, ReplicatedDataset, ReplicationRun
from fleet_app.runs import RunState


def run_job(rows, **kw):
    run = services.replication_run_start(job=rows.job, enqueue=False, **kw)
    tasks.replication_run_execute(run.pk)
    run.refresh_from_db()
    return run


def states(rows) -> dict[str, ReplicatedDataset]:
    return {
        d.source_dataset.removeprefix(rows.source.name).lstrip("/") or ".": d
        for d in ReplicatedDataset.objects.filter(job=rows.job)
    }


def approve_and_apply(rows, report, fix, actor):
    services.divergence_approve(report=report, fix=fix, actor=actor, enqueue=False)
    services.divergence_fix_apply(report_id=report.pk, enqueue=False)
    report.refresh_from_db()
    assert report.status == "applied", report.outcome
    rerun = ReplicationRun.objects.get(job=rows.job, state=RunState.PENDING)
    tasks.replication_run_execute(rerun.pk)
    rerun.refresh_from_db()
    return rerun


def zfs_check() -> tuple[int, str]:
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("zfs_check", stdout=out)
    return exit_.value.code, out.getvalue()


@pytest.fixture
def tree(zfs_rows):
    """A recursive job over a parent and two children, synced once."""
    rows, lab = zfs_rows, zfs_rows.lab
    for child in ("a", "b"):
        lab.zfs("create", f"{rows.source.name}/{child}")
    for name in ("", "/a", "/b"):
        lab.snapshot(rows.source.name + name, "s1")
    rows.job.recursive = True
    rows.job.save(update_fields=["recursive"])
    first = run_job(rows)
    assert first.state == RunState.SUCCEEDED, first.error
    assert set(states(rows)) == {".", "a", "b"}
    assert all(s.state == "ok" and s.last_bytes > 0 for s in states(rows).values())
    return rows


def snap_all(rows, short):
    for name in ("", "/a", "/b"):
        rows.lab.snapshot(rows.source.name + name, short)


def test_one_run_replicates_the_whole_tree_each_dataset_counted(tree):
    rows, lab = tree, tree.lab
    snap_all(rows, "s2")
    run = run_job(rows)
    assert run.state == RunState.SUCCEEDED, run.error
    assert ReplicationRun.objects.filter(job=rows.job).count() == 2  # no run per child
    for child in ("a", "b"):
        assert lab.snapshots(f"{rows.target.name}/{child}") == ["s1", "s2"]
    assert run.bytes == sum(s.last_bytes for s in states(rows).values())
    assert "a: incremental" in run.log.replace(rows.source.name + "/", "")


def test_retarget_of_one_child_changes_that_child_only(tree, alice):
    """Failure 1: following one renamed child never rewrites the job or resends siblings."""
    rows, lab = tree, tree.lab
    moved = f"{rows.source.name}/a-renamed"
    lab.rename(f"{rows.source.name}/a", moved)
    snap_all_but_a = ("", "/b")
    for name in snap_all_but_a:
        lab.snapshot(rows.source.name + name, "s2")
    lab.snapshot(moved, "s2")

    run = run_job(rows)

    assert run.state == RunState.PARTIALLY_FAILED, run.error
    report = DivergenceReport.objects.get(job=rows.job)
    assert report.kind == "source_renamed"
    assert report.source_dataset == f"{rows.source.name}/a"
    assert report.source_moved_to == moved
    assert [f["kind"] for f in report.fixes] == ["retarget", "rename_aside"]
    assert "no longer exists" in run.error and moved in run.error
    # The renamed child was not sent anywhere as a new dataset.
    assert "a-renamed" not in lab.zfs("list", "-H", "-o", "name", "-r", rows.target.name)
    before = states(rows)
    assert before["b"].state == "ok" and before["a"].state == "diverged"

    rerun = approve_and_apply(rows, report, "retarget", alice)

    rows.job.refresh_from_db()
    assert rows.job.source.name == rows.source.name  # the job's definition is untouched
    assert rerun.source_dataset == f"{rows.source.name}/a"
    assert rerun.state == RunState.SUCCEEDED and rerun.plan_kind == "incremental", rerun.error
    after = states(rows)
    assert after["a"].source_name == moved and after["a"].state == "ok"
    assert lab.snapshots(f"{rows.target.name}/a") == ["s1", "s2"]
    # Only a received anything; b and the parent were not in the run at all.
    for name in (".", "b"):
        assert after[name].last_run_id == before[name].last_run_id
        assert after[name].total_bytes == before[name].total_bytes
    assert after["a"].last_bytes > 0
    assert run_job(rows).state == RunState.SUCCEEDED


def test_a_target_modified_since_its_snapshot_is_reported_from_the_whole_error(zfs_rows, alice):
    """Failure 2: the two-line receive error yields a target_modified report and the
    rollback fix, not retries forever."""
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "s1")
    assert run_job(rows).state == RunState.SUCCEEDED
    lab.write(rows.target.name, "written-on-the-target")
    lab.snapshot(rows.source.name, "s2")

    run = run_job(rows)

    assert run.state == RunState.FAILED and run.phase == "diverged"
    report = DivergenceReport.objects.get(job=rows.job)
    assert report.kind == "target_modified"
    assert "modified since its newest snapshot s1" in report.reason
    assert "since most recent snapshot" in report.reason  # the receive's words, joined
    assert [f["kind"] for f in report.fixes] == ["rollback", "rename_aside"]
    assert report.fix("rollback")["commands"] == [f"zfs rollback {rows.target.name}@s1"]
    assert lab.snapshots(rows.target.name) == ["s1"]

    rerun = approve_and_apply(rows, report, "rollback", alice)

    assert rerun.state == RunState.SUCCEEDED and rerun.plan_kind == "incremental", rerun.error
    assert lab.snapshots(rows.target.name) == ["s1", "s2"]


def test_a_failing_child_shows_in_its_own_lag_and_in_zfs_check(tree):
    """Failure 3: state and lag per child, rolled up; the check names the worst child."""
    rows, lab = tree, tree.lab
    lab.write(f"{rows.target.name}/b", "local-change")
    snap_all(rows, "s2")

    run = run_job(rows)

    assert run.state == RunState.PARTIALLY_FAILED
    assert f"{rows.source.name}/b" in run.error and "modified" in run.error
    by_name = states(rows)
    assert by_name["a"].state == "ok" and by_name["b"].state == "diverged"
    assert by_name["b"].last_snapshot == "s1" and by_name["b"].source_newest == "s2"
    code, out = zfs_check()
    assert code == 2
    assert f"CRIT: job {rows.job.name}: diverged" in out
    assert f"{rows.source.name}/b" in out
    from backups_app.zfs import selectors

    (row,) = [r for r in selectors.job_rows() if r["job"].pk == rows.job.pk]
    child = next(c for c in row["datasets"] if c["dataset"].endswith("/b"))
    assert child["state"] == selectors.CRIT and child["lag_seconds"] is not None
    assert row["lag_seconds"] == max(c["lag_seconds"] or 0 for c in row["datasets"])


def test_a_target_moved_on_the_target_stops_without_a_full_send_or_a_leaked_hold(zfs_rows, alice):
    """Failure 4."""
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "s1")
    assert run_job(rows).state == RunState.SUCCEEDED
    moved = f"{rows.target.name}-moved"
    lab.rename(rows.target.name, moved)
    lab.snapshot(rows.source.name, "s2")

    run = run_job(rows)

    assert run.state == RunState.FAILED and run.bytes == 0
    report = DivergenceReport.objects.get(job=rows.job)
    assert report.kind == "target_moved"
    assert moved in report.reason
    assert [f["kind"] for f in report.fixes] == ["rename_back", "resend_full"]
    assert states(rows)["."].state == "stopped"
    # Nothing was sent to the old path, and the source holds one snapshot only.
    assert (
        rows.target.name not in lab.zfs("list", "-H", "-o", "name", "-r", lab.target_pool).split()
    )
    assert lab.userrefs(f"{rows.source.name}@s1") == 1
    assert lab.userrefs(f"{rows.source.name}@s2") == 0

    rerun = approve_and_apply(rows, report, "rename_back", alice)

    assert rerun.state == RunState.SUCCEEDED and rerun.plan_kind == "incremental", rerun.error
    assert lab.snapshots(rows.target.name) == ["s1", "s2"]
    assert lab.userrefs(f"{rows.source.name}@s1") == 0  # the hold moved on, none leaked
    assert lab.userrefs(f"{rows.source.name}@s2") == 1


def test_a_vanished_target_is_resent_in_full_only_once_approved(zfs_rows, alice):
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "s1")
    assert run_job(rows).state == RunState.SUCCEEDED
    lab.zfs("release", rows.job.hold_tag, f"{rows.target.name}@s1")
    lab.zfs("destroy", "-r", rows.target.name)

    assert run_job(rows).state == RunState.FAILED
    report = DivergenceReport.objects.get(job=rows.job)
    assert report.kind == "target_moved" and "is gone" in report.reason
    assert [f["kind"] for f in report.fixes] == ["resend_full"]

    rerun = approve_and_apply(rows, report, "resend_full", alice)

    assert rerun.state == RunState.SUCCEEDED and rerun.plan_kind == "full", rerun.error
    assert lab.userrefs(f"{rows.source.name}@s1") == 1


def test_a_never_synced_parent_is_fixed_children_then_parent(zfs_rows, alice):
    """Failure 6: the seed's recipe, offered first; the in-sync children are not resent."""
    rows, lab = zfs_rows, zfs_rows.lab
    for child in ("a", "b"):
        lab.zfs("create", f"{rows.source.name}/{child}")
    for name in ("", "/a", "/b"):
        lab.snapshot(rows.source.name + name, "s1")
    # The target parent was made by hand, with a history of its own.
    lab.zfs("create", rows.target.name)
    lab.snapshot(rows.target.name, "by-hand", data=1000)
    rows.job.recursive = True
    rows.job.save(update_fields=["recursive"])

    run_job(rows)  # the children arrive; the parent stops
    run = run_job(rows)

    assert run.state == RunState.PARTIALLY_FAILED
    report = DivergenceReport.objects.get(job=rows.job)
    assert report.kind == "no_common" and report.source_dataset == rows.source.name
    assert [f["kind"] for f in report.fixes] == ["children_then_parent", "rename_aside"]
    recipe = report.fix("children_then_parent")
    assert recipe["children"] == [f"{rows.target.name}/a", f"{rows.target.name}/b"]
    before = states(rows)
    assert before["a"].state == before["b"].state == "ok"
    guid_a = lab.guid(f"{rows.target.name}/a@s1")

    rerun = approve_and_apply(rows, report, "children_then_parent", alice)

    assert rerun.state == RunState.SUCCEEDED, rerun.error
    assert lab.guid(f"{rows.target.name}@s1") == lab.guid(f"{rows.source.name}@s1")
    assert lab.guid(f"{rows.target.name}/a@s1") == guid_a  # moved, not resent
    assert lab.snapshots(recipe["aside"]) == ["by-hand"]  # kept aside
    after = states(rows)
    for child in ("a", "b"):
        assert after[child].total_bytes == before[child].total_bytes
    snap_all(rows, "s2")
    again = run_job(rows)
    assert again.state == RunState.SUCCEEDED, again.error
    assert lab.snapshots(f"{rows.target.name}/b") == ["s1", "s2"]
