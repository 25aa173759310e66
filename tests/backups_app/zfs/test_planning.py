"""The pruning planner (examples and a property test over random policies and histories)
and the replication planner (full, incremental, up to date, diverged)."""

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backups_app.zfs.names import PERIODS, sanoid_format
from backups_app.zfs.parsers import Snapshot
from backups_app.zfs.planning import (
    Policy,
    RenameAsideAndResend,
    RollbackToCommon,
    plan_replication,
    plan_snapshots,
)

NOW = dt.datetime(2024, 3, 6, 10, 20, 30, tzinfo=dt.UTC)
STEP = {
    "frequently": dt.timedelta(minutes=15),
    "hourly": dt.timedelta(hours=1),
    "daily": dt.timedelta(days=1),
    "weekly": dt.timedelta(weeks=1),
    "monthly": dt.timedelta(days=30),
    "yearly": dt.timedelta(days=365),
}


def snaps(dataset, shorts, *, guids=None, userrefs=()):
    return [
        Snapshot(
            name=f"{dataset}@{short}",
            guid=(guids or {}).get(short, 1000 + i),
            creation=1_700_000_000 + i,
            userrefs=1 if short in userrefs else 0,
            index=i,
        )
        for i, short in enumerate(shorts)
    ]


def history(period, count, *, end=NOW):
    return [sanoid_format(end - STEP[period] * (count - i), period) for i in range(count)]


# --- Pruning --------------------------------------------------------------------------------


def test_it_keeps_the_newest_of_each_period_and_destroys_the_rest():
    shorts = history("hourly", 5) + history("daily", 3)
    existing = snaps("t/a", sorted(shorts))
    plan = plan_snapshots(
        dataset="t/a", policy=Policy(hourly=2, daily=2), snapshots=existing, now=NOW
    )
    destroyed = {s.short for s in plan.destroy}
    assert destroyed == set(history("hourly", 5)[:3]) | set(history("daily", 3)[:1])


def test_it_takes_a_snapshot_when_a_period_has_none_since_it_began():
    existing = snaps("t/a", history("hourly", 2))  # the newest is 10:20:30 - 1h: due
    plan = plan_snapshots(
        dataset="t/a", policy=Policy(hourly=24, daily=7), snapshots=existing, now=NOW
    )
    assert plan.create == [
        "t/a@autosnap_2024-03-06_10:20:30_hourly",
        "t/a@autosnap_2024-03-06_10:20:30_daily",
    ]
    taken = snaps("t/a", ["autosnap_2024-03-06_10:00:05_hourly"])
    assert (
        plan_snapshots(dataset="t/a", policy=Policy(hourly=24), snapshots=taken, now=NOW).create
        == []
    )


def test_it_spares_held_snapshots_and_each_targets_base():
    shorts = history("hourly", 6)
    existing = snaps("t/a", shorts, userrefs={shorts[0]})
    plan = plan_snapshots(
        dataset="t/a",
        policy=Policy(hourly=1),
        snapshots=existing,
        now=NOW,
        shared_with_targets={"backup:b/a": shorts[2], "offsite:c/a": shorts[3]},
    )
    assert {s.short for s in plan.destroy} == {shorts[1], shorts[4]}
    assert plan.spared[f"t/a@{shorts[0]}"] == "held"
    assert plan.spared[f"t/a@{shorts[2]}"] == "base of backup:b/a"


def test_it_never_touches_snapshots_it_did_not_name_and_obeys_autoprune():
    existing = snaps("t/a", ["manual-before-upgrade", "syncoid_ovh3_2024-03-01:00:00:01"])
    assert plan_snapshots(dataset="t/a", policy=Policy(), snapshots=existing, now=NOW).empty
    hourly = snaps("t/a", history("hourly", 4))
    off = Policy(hourly=1, autoprune=False, autosnap=False)
    assert plan_snapshots(dataset="t/a", policy=off, snapshots=hourly, now=NOW).empty


policies = st.builds(
    Policy,
    **{p: st.integers(min_value=0, max_value=4) for p in PERIODS},
    autosnap=st.booleans(),
    autoprune=st.booleans(),
)


@st.composite
def histories(draw):
    """Random sanoid and foreign snapshots, random holds, random target bases."""
    shorts = []
    for period in PERIODS:
        n = draw(st.integers(min_value=0, max_value=6))
        offsets = draw(st.lists(st.integers(1, 400), min_size=n, max_size=n, unique=True))
        shorts += [sanoid_format(NOW - STEP[period] * o / 7, period) for o in offsets]
    shorts += [f"manual{i}" for i in range(draw(st.integers(0, 2)))]
    shorts = sorted(set(shorts))
    held = draw(st.sets(st.sampled_from(shorts), max_size=3)) if shorts else set()
    targets = {}
    if shorts:
        for label in draw(st.lists(st.sampled_from(["b", "c", "d"]), unique=True)):
            targets[label] = draw(st.sampled_from(shorts))
    return snaps("t/a", shorts, userrefs=held), held, targets


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(policy=policies, case=histories())
def test_pruning_never_destroys_a_held_or_shared_snapshot(policy, case):
    existing, held, targets = case
    plan = plan_snapshots(
        dataset="t/a", policy=policy, snapshots=existing, now=NOW, shared_with_targets=targets
    )
    destroyed = {s.short for s in plan.destroy}
    # Never held, never the base of a target, never a snapshot sanoid did not name.
    assert not destroyed & held
    assert not destroyed & set(targets.values())
    assert all(s.period is not None for s in plan.destroy)
    assert destroyed <= {s.short for s in existing}
    if not policy.autoprune:
        assert not destroyed
    # The newest `count` snapshots of each period are always kept.
    for period in PERIODS:
        mine = sorted((s for s in existing if s.period == period), key=lambda s: s.short)
        count = policy.count(period)
        keep = {s.short for s in mine[-count:]} if count else set()
        assert not destroyed & keep
        # Whatever policy and history, every expired one is destroyed or spared with a reason.
        expired = {s.name for s in mine} - {f"t/a@{k}" for k in keep}
        if policy.autoprune:
            assert expired == {s.name for s in plan.destroy if s.period == period} | {
                n for n in plan.spared if n in expired
            }
    # Creations are new sanoid names of periods the policy keeps.
    for name in plan.create:
        period = name.rsplit("_", 1)[1]
        assert policy.autosnap and policy.count(period) > 0
        assert name.split("@", 1)[1] not in {s.short for s in existing}


# --- Replication --------------------------------------------------------------------------


def test_a_first_run_sends_the_oldest_in_full_then_the_rest_incrementally():
    src = snaps("s/a", ["s1", "s2", "s3"])
    plan = plan_replication(
        source="s/a", target="b/a", source_snapshots=src, target_snapshots=None, now=NOW
    )
    assert plan.kind == "full"
    assert [(st.base, st.snapshot) for st in plan.steps] == [
        (None, "s/a@s1"),
        ("s/a@s1", "s/a@s3"),
    ]
    assert not any(step.force for step in plan.steps)


def test_it_sends_incrementally_from_the_newest_common_snapshot():
    src = snaps("s/a", ["s1", "s2", "s3", "s4"])
    tgt = snaps("b/a", ["s1", "s2"], guids={"s1": 1000, "s2": 1001})
    plan = plan_replication(
        source="s/a", target="b/a", source_snapshots=src, target_snapshots=tgt, now=NOW
    )
    assert plan.kind == "incremental"
    assert plan.common.short == "s2"
    assert [(st.base, st.snapshot) for st in plan.steps] == [("s/a@s2", "s/a@s4")]


def test_older_target_only_snapshots_are_not_divergence():
    # The source pruned s0; the target keeps it: normal with different retention.
    src = snaps("s/a", ["s1", "s2"], guids={"s1": 1, "s2": 2})
    tgt = snaps("b/a", ["s0", "s1"], guids={"s0": 9, "s1": 1})
    plan = plan_replication(
        source="s/a", target="b/a", source_snapshots=src, target_snapshots=tgt, now=NOW
    )
    assert plan.kind == "incremental"


def test_up_to_date():
    src = snaps("s/a", ["s1", "s2"])
    tgt = snaps("b/a", ["s1", "s2"])
    plan = plan_replication(
        source="s/a", target="b/a", source_snapshots=src, target_snapshots=tgt, now=NOW
    )
    assert plan.kind == "up_to_date" and plan.steps == []


def test_a_target_with_newer_snapshots_diverged_and_both_fixes_are_offered():
    src = snaps("s/a", ["s1", "s2", "s3"], guids={"s1": 1, "s2": 2, "s3": 3})
    tgt = snaps("b/a", ["s1", "s2", "local"], guids={"s1": 1, "s2": 2, "local": 77})
    plan = plan_replication(
        source="s/a", target="b/a", source_snapshots=src, target_snapshots=tgt, now=NOW
    )
    assert plan.kind == "diverged" and plan.steps == []
    report = plan.divergence
    assert report.last_common == "s2"
    assert report.source_only == ["s3"]
    assert report.target_only == ["local"]
    rollback, rename = report.fixes
    assert rollback == RollbackToCommon(target="b/a", snapshot="b/a@s2", destroys=("b/a@local",))
    assert isinstance(rename, RenameAsideAndResend) and rename.aside.startswith("b/a-diverged-")


def test_same_name_different_guid_is_not_common():
    src = snaps("s/a", ["s1", "s2"], guids={"s1": 1, "s2": 2})
    tgt = snaps("b/a", ["s1", "s2"], guids={"s1": 51, "s2": 52})
    plan = plan_replication(
        source="s/a", target="b/a", source_snapshots=src, target_snapshots=tgt, now=NOW
    )
    assert plan.kind == "diverged"
    assert plan.divergence.last_common is None
    assert plan.divergence.name_clashes == ["s1", "s2"]
    assert [f.kind for f in plan.divergence.fixes] == ["rename_aside"]


def test_a_bookmark_of_the_base_lets_an_incremental_start_after_the_base_is_gone():
    src = snaps("s/a", ["s3", "s4"], guids={"s3": 3, "s4": 4})
    marks = [Snapshot("s/a#s2", 2, 0, 0, 0, 10)]
    tgt = snaps("b/a", ["s1", "s2"], guids={"s1": 1, "s2": 2})
    plan = plan_replication(
        source="s/a",
        target="b/a",
        source_snapshots=src,
        target_snapshots=tgt,
        now=NOW,
        source_bookmarks=marks,
    )
    assert plan.kind == "incremental"
    assert plan.steps[0].base == "s/a#s2" and plan.steps[0].intermediates is False


def test_a_missing_source_is_divergence():
    plan = plan_replication(
        source="s/a",
        target="b/a",
        source_snapshots=[],
        target_snapshots=snaps("b/a", ["s1"]),
        now=NOW,
        source_exists=False,
    )
    assert plan.kind == "diverged"
    assert "no longer exists" in plan.divergence.reason
