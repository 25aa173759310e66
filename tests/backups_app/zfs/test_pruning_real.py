"""Pruning on real ZFS spares the snapshot a target still needs, held or not."""

import datetime as dt

from backups_app.zfs.pipeline import Endpoint, replicate, snapshot_apply, snapshot_plan
from backups_app.zfs.planning import Policy
from backups_app.zfs.runner import LocalRunner

from .realzfs import TAG, pair, sanoid

NOW = dt.datetime(2024, 3, 6, 12, 30, tzinfo=dt.UTC)


def test_pruning_spares_the_newest_common_snapshot(zfs_lab):
    lab = zfs_lab
    src, tgt, assessment = pair(lab)
    hours = [sanoid(NOW - dt.timedelta(hours=h)) for h in (6, 5, 4, 3)]
    for short in hours:
        lab.snapshot(src.dataset, short)
    replicate(src, tgt, hold_tag=TAG, assessment=assessment)
    common = hours[-1]
    # Two more hours the target has not received yet.
    later = [sanoid(NOW - dt.timedelta(hours=h)) for h in (2, 1)]
    for short in later:
        lab.snapshot(src.dataset, short)
    # Drop the hold so the target's base is protected by the planner's rule alone.
    lab.zfs("release", TAG, f"{src.dataset}@{common}")

    # Pruning runs where sanoid would: on the host itself (root), not as the operator.
    local = Endpoint(LocalRunner(), src.dataset)
    plan = snapshot_plan(
        local, policy=Policy(hourly=1, autosnap=False), now=NOW, targets={"backup": tgt}
    )
    assert {s.short for s in plan.destroy} == set(hours[:3]) | {later[0]}
    assert plan.spared == {f"{src.dataset}@{common}": "base of backup"}
    done = snapshot_apply(local, plan)
    assert len(done["destroyed"]) == 4 and not done["refused"]
    assert lab.snapshots(src.dataset) == [common, later[1]]

    # The base survived, so the next run is still incremental.
    outcome = replicate(src, tgt, hold_tag=TAG, assessment=assessment)
    assert outcome.plan.kind == "incremental"
    assert outcome.plan.common.short == common
    assert lab.snapshots(tgt.dataset)[-1] == later[1]
    src.runner.close()


def test_a_held_snapshot_is_spared_and_a_due_one_taken(zfs_lab):
    lab = zfs_lab
    dataset = lab.dataset(lab.source_pool)
    days = [sanoid(NOW - dt.timedelta(days=d), "daily") for d in (3, 2, 1)]
    for short in days:
        lab.snapshot(dataset, short, data=0)
    lab.zfs("hold", "legal", f"{dataset}@{days[0]}")
    local = Endpoint(LocalRunner(), dataset)

    plan = snapshot_plan(local, policy=Policy(daily=1), now=NOW)

    assert plan.create == [f"{dataset}@autosnap_2024-03-06_12:30:00_daily"]
    assert [s.short for s in plan.destroy] == [days[1]]
    assert plan.spared == {f"{dataset}@{days[0]}": "held"}
    snapshot_apply(local, plan)
    assert lab.snapshots(dataset) == [days[0], days[2], "autosnap_2024-03-06_12:30:00_daily"]
