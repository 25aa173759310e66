"""Divergence on real ZFS: detected and reported, nothing touched, fixed only after an
approval; a renamed source found again by its snapshots' GUIDs."""

import datetime as dt

import pytest

from backups_app.zfs.pipeline import (
    Approval,
    ApprovalRequired,
    Endpoint,
    apply_fix,
    fix_commands,
    replicate,
)
from backups_app.zfs.planning import RenameAsideAndResend, RetargetSource, RollbackToCommon

from .realzfs import TAG, pair

APPROVED = Approval(by="alice@example.com", at=dt.datetime(2024, 3, 6, tzinfo=dt.UTC))


def test_a_target_with_its_own_snapshots_stops_with_a_report_and_waits_for_approval(zfs_lab):
    lab = zfs_lab
    src, tgt, assessment = pair(lab)
    lab.snapshot(src.dataset, "s1")
    lab.snapshot(src.dataset, "s2")
    replicate(src, tgt, hold_tag=TAG, assessment=assessment)
    lab.snapshot(tgt.dataset, "made-on-target", data=0)
    lab.snapshot(src.dataset, "s3")

    outcome = replicate(src, tgt, hold_tag=TAG, assessment=assessment)

    assert outcome.plan.kind == "diverged" and outcome.steps == []
    report = outcome.divergence
    assert report.last_common == "s2"
    assert report.source_only == ["s3"]
    assert report.target_only == ["made-on-target"]
    assert [f.kind for f in report.fixes] == ["rollback", "rename_aside"]
    # Nothing on the target changed.
    assert lab.snapshots(tgt.dataset) == ["s1", "s2", "made-on-target"]

    rollback = report.fixes[0]
    assert isinstance(rollback, RollbackToCommon)
    assert fix_commands(rollback) == [["rollback", "-r", f"{tgt.dataset}@s2"]]
    with pytest.raises(ApprovalRequired):
        apply_fix(rollback, target=tgt, approval=None)
    assert lab.snapshots(tgt.dataset) == ["s1", "s2", "made-on-target"]

    assert apply_fix(rollback, target=tgt, approval=APPROVED) == [
        f"zfs rollback -r {tgt.dataset}@s2"
    ]
    after = replicate(src, tgt, hold_tag=TAG, assessment=assessment)
    assert after.plan.kind == "incremental"
    assert lab.snapshots(tgt.dataset) == ["s1", "s2", "s3"]
    src.runner.close()


def test_no_common_snapshot_is_fixed_by_renaming_the_target_aside(zfs_lab):
    lab = zfs_lab
    src, tgt, assessment = pair(lab)
    lab.snapshot(src.dataset, "s1")
    # The target already holds another history under the same name.
    lab.zfs("create", tgt.dataset)
    lab.snapshot(tgt.dataset, "s1", data=1000)

    outcome = replicate(src, tgt, hold_tag=TAG, assessment=assessment)

    report = outcome.divergence
    assert outcome.plan.kind == "diverged"
    assert report.last_common is None and report.kind == "no_common"
    assert report.name_clashes == ["s1"]  # same name, another GUID
    (fix,) = report.fixes
    assert isinstance(fix, RenameAsideAndResend)
    apply_fix(fix, target=tgt, approval=APPROVED)
    assert lab.snapshots(fix.aside) == ["s1"]  # kept, not destroyed

    again = replicate(src, tgt, hold_tag=TAG, assessment=assessment)
    assert again.plan.kind == "full"
    assert lab.guid(f"{tgt.dataset}@s1") == lab.guid(f"{src.dataset}@s1")
    src.runner.close()


def test_a_renamed_source_is_divergence_naming_where_it_went(zfs_lab):
    lab = zfs_lab
    src, tgt, assessment = pair(lab)
    lab.snapshot(src.dataset, "s1")
    lab.snapshot(src.dataset, "s2")
    replicate(src, tgt, hold_tag=TAG, assessment=assessment)
    # Seed 004: the operator renames the dataset aside and a new one takes its name.
    moved = f"{src.dataset}-old"
    lab.rename(src.dataset, moved)
    lab.zfs("create", src.dataset)
    lab.snapshot(src.dataset, "fresh")

    outcome = replicate(src, tgt, hold_tag=TAG, assessment=assessment)

    report = outcome.divergence
    assert outcome.plan.kind == "diverged" and outcome.steps == []
    assert report.source_moved_to == moved and report.kind == "source_renamed"
    assert moved in report.reason
    assert report.source_only == ["fresh"] and report.last_common is None
    retarget = report.fixes[0]
    assert retarget == RetargetSource(old=src.dataset, new=moved)
    assert lab.snapshots(tgt.dataset) == ["s1", "s2"]

    # Approved: the job follows the data to its new name and goes on incrementally.
    assert apply_fix(retarget, target=tgt, approval=APPROVED) == []
    lab.snapshot(moved, "s3")
    followed = Endpoint(src.runner, moved, src.pool)
    outcome = replicate(followed, tgt, hold_tag=TAG, assessment=assessment)
    assert outcome.plan.kind == "incremental"
    assert lab.snapshots(tgt.dataset) == ["s1", "s2", "s3"]
    src.runner.close()


def test_a_source_that_vanished_is_divergence_too(zfs_lab):
    lab = zfs_lab
    src, tgt, assessment = pair(lab)
    lab.snapshot(src.dataset, "s1")
    replicate(src, tgt, hold_tag=TAG, assessment=assessment)
    lab.rename(src.dataset, f"{src.dataset}-moved")

    outcome = replicate(src, tgt, hold_tag=TAG, assessment=assessment)

    assert outcome.plan.kind == "diverged"
    assert "no longer exists" in outcome.divergence.reason
    assert outcome.divergence.source_moved_to == f"{src.dataset}-moved"
    src.runner.close()
