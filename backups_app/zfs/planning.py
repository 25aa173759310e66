"""The two planners: which snapshots to take and destroy, and what to send.

Both are pure functions of what was listed, so the preview (``zfs_plan``, the admin) shows
exactly what a run would do, and the rules that keep data safe are tested over random
histories:

- pruning never destroys a held snapshot, nor the newest snapshot any replication target
  still shares with the source (the base of its next incremental);
- replication sends only from a common snapshot matched by name *and* GUID, and when the
  target went its own way it stops with a report and fixes that staff must approve.
"""

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .names import PERIODS, sanoid_format, sanoid_parse
from .parsers import Snapshot

# --- Snapshot policy and pruning -------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """sanoid's vocabulary: how many snapshots of each period to keep, whether to take
    them (``autosnap``) and whether to destroy expired ones (``autoprune``)."""

    frequently: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    autosnap: bool = True
    autoprune: bool = True
    frequent_period: int = 15  # minutes, as sanoid's frequent_period

    def count(self, period: str) -> int:
        return int(getattr(self, period))


def period_start(now: dt.datetime, period: str, frequent_minutes: int = 15) -> dt.datetime:
    """Start of the current ``period`` (UTC): a snapshot taken since then makes it not due."""
    now = now.astimezone(dt.UTC)
    if period == "frequently":
        minute = now.minute - now.minute % max(1, frequent_minutes)
        return now.replace(minute=minute, second=0, microsecond=0)
    if period == "hourly":
        return now.replace(minute=0, second=0, microsecond=0)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "weekly":
        return day - dt.timedelta(days=day.weekday())
    if period == "monthly":
        return day.replace(day=1)
    if period == "yearly":
        return day.replace(month=1, day=1)
    raise ValueError(f"unknown period {period!r}")


def _taken_at(snapshot: Snapshot) -> dt.datetime:
    parsed = sanoid_parse(snapshot.short)
    if parsed is not None:
        return parsed.taken_at
    return dt.datetime.fromtimestamp(snapshot.creation, dt.UTC)


@dataclass
class SnapshotPlan:
    """What a snapshot job would do on one dataset."""

    dataset: str
    create: list[str] = field(default_factory=list)  # full names to snapshot
    destroy: list[Snapshot] = field(default_factory=list)
    # Expired by the policy but kept, with why: "held", "base of target X".
    spared: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.create and not self.destroy


def plan_snapshots(
    *,
    dataset: str,
    policy: Policy,
    snapshots: Sequence[Snapshot],
    now: dt.datetime,
    held: set[str] = frozenset(),
    shared_with_targets: Mapping[str, str | None] | None = None,
) -> SnapshotPlan:
    """Due snapshots to take and expired ``autosnap_`` snapshots to destroy.

    ``held`` are short names with a user hold (from ``userrefs`` or ``zfs holds``);
    ``shared_with_targets`` maps a target's label to the short name of the newest snapshot
    it shares with this dataset. Only sanoid-named snapshots are ever destroyed: a manual
    snapshot or another tool's is never this planner's to remove.
    """
    plan = SnapshotPlan(dataset=dataset)
    held = set(held) | {s.short for s in snapshots if s.userrefs > 0}
    bases: dict[str, list[str]] = {}
    for target, short in (shared_with_targets or {}).items():
        if short:
            bases.setdefault(short, []).append(target)
    by_period: dict[str, list[Snapshot]] = {p: [] for p in PERIODS}
    for snap in snapshots:
        period = snap.period
        if period is not None:
            by_period[period].append(snap)
    for period in PERIODS:
        keep = policy.count(period)
        mine = sorted(by_period[period], key=lambda s: (_taken_at(s), s.index), reverse=True)
        if policy.autosnap and keep > 0:
            start = period_start(now, period, policy.frequent_period)
            if not mine or _taken_at(mine[0]) < start:
                plan.create.append(f"{dataset}@{sanoid_format(now, period)}")
        if not policy.autoprune:
            continue
        for snap in mine[keep:]:
            if snap.short in held:
                plan.spared[snap.name] = "held"
            elif snap.short in bases:
                plan.spared[snap.name] = "base of " + ", ".join(sorted(bases[snap.short]))
            else:
                plan.destroy.append(snap)
    plan.destroy.sort(key=lambda s: s.index)
    return plan


# --- Replication --------------------------------------------------------------------------


@dataclass(frozen=True)
class SendStep:
    """One ``zfs send | zfs receive``: full when ``base`` is None."""

    snapshot: str  # full source snapshot name
    base: str | None = None  # full source snapshot (or bookmark) name
    intermediates: bool = True
    force: bool = False  # receive -F: only from an approved fix

    @property
    def kind(self) -> str:
        return "full" if self.base is None else "incremental"


@dataclass(frozen=True)
class RenameAsideAndResend:
    """Fix: move the target aside (nothing destroyed) and send the source in full."""

    target: str
    aside: str
    kind: str = "rename_aside"

    def describe(self) -> str:
        return (
            f"rename {self.target} to {self.aside} (kept, nothing destroyed), "
            f"then send the source in full"
        )


@dataclass(frozen=True)
class RollbackToCommon:
    """Fix: roll the target back to the last common snapshot, destroying what came after."""

    target: str
    snapshot: str  # full target snapshot name
    destroys: tuple[str, ...] = ()
    kind: str = "rollback"

    def describe(self) -> str:
        lost = ", ".join(self.destroys) or "changes made since"
        return f"roll {self.target} back to {self.snapshot} (destroys {lost})"


@dataclass(frozen=True)
class RetargetSource:
    """Fix: the source dataset moved; point the job at its new name."""

    old: str
    new: str
    kind: str = "retarget"

    def describe(self) -> str:
        return f"point the job at the source's new name {self.new} (was {self.old})"


@dataclass(frozen=True)
class RenameBack:
    """Fix: the target dataset was moved on the target host; move it back."""

    target: str
    moved: str
    kind: str = "rename_back"

    def describe(self) -> str:
        return f"rename {self.moved} back to {self.target} (nothing sent, nothing destroyed)"


@dataclass(frozen=True)
class ResendFull:
    """Fix: the target vanished (or staff leave the moved copy where it is): release the
    job's hold on the source and send this dataset in full to its path."""

    target: str
    released: str = ""  # the source snapshot whose hold is released
    kind: str = "resend_full"

    def describe(self) -> str:
        held = f" (releases the hold on {self.released})" if self.released else ""
        return f"send this dataset in full to {self.target}{held}; nothing else is resent"


@dataclass(frozen=True)
class ResumeFromCommon:
    """Fix: the target was rolled back to a snapshot the source still has: go on from it."""

    target: str
    snapshot: str  # full target snapshot name, the newest common one
    released: str = ""  # the source snapshot held for the lost one
    kind: str = "resume_from_common"

    def describe(self) -> str:
        return f"send incrementally from {self.snapshot} again (nothing destroyed" + (
            f"; releases the hold on {self.released})" if self.released else ")"
        )


@dataclass(frozen=True)
class ChildrenThenParent:
    """Fix for a parent that never synced whose children are in sync (seed's recipe):
    send the parent alone to ``staging``, move the children under it, rename the old
    parent aside, then rename ``staging`` to the parent's name. The children keep their
    history and are not resent."""

    target: str
    staging: str
    aside: str
    children: tuple[str, ...] = ()
    kind: str = "children_then_parent"

    def describe(self) -> str:
        moved = ", ".join(c.rsplit("/", 1)[1] for c in self.children) or "no children"
        return (
            f"send the parent alone to {self.staging}, move its children ({moved}) under it, "
            f"rename {self.target} to {self.aside} (kept), then {self.staging} to "
            f"{self.target}: the children are not resent"
        )


Fix = (
    RenameAsideAndResend
    | RollbackToCommon
    | RetargetSource
    | RenameBack
    | ResendFull
    | ResumeFromCommon
    | ChildrenThenParent
)


@dataclass
class Divergence:
    """Why a replication stopped, and what staff may approve to go on."""

    reason: str
    last_common: str | None = None  # short name
    # target_modified, target_rolled_back, source_renamed, target_moved,
    # snapshots_missing, no_common
    kind: str = ""
    source_only: list[str] = field(default_factory=list)
    target_only: list[str] = field(default_factory=list)
    # Same name on both sides, different GUID: not the same snapshot.
    name_clashes: list[str] = field(default_factory=list)
    source_moved_to: str | None = None
    fixes: list[Fix] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "reason": self.reason,
            "last_common": self.last_common,
            "source_only": self.source_only,
            "target_only": self.target_only,
            "name_clashes": self.name_clashes,
            "source_moved_to": self.source_moved_to,
            "fixes": [{"kind": f.kind, "describe": f.describe(), **f.__dict__} for f in self.fixes],
        }


@dataclass
class ReplicationPlan:
    """What a replication run would do: ``full``, ``incremental``, ``up_to_date`` or
    ``diverged`` (nothing is sent; ``divergence`` says why)."""

    kind: str
    source: str
    target: str
    steps: list[SendStep] = field(default_factory=list)
    common: Snapshot | None = None  # the newest common snapshot on the source side
    target_common: Snapshot | None = None
    divergence: Divergence | None = None
    source_newest: Snapshot | None = None

    @property
    def to_snapshot(self) -> str | None:
        return self.steps[-1].snapshot if self.steps else None


def newest_common(
    source: Sequence[Snapshot], target: Sequence[Snapshot]
) -> tuple[Snapshot, Snapshot] | None:
    """The newest snapshot on both sides with the same name and GUID (source, target)."""
    by_key = {s.key: s for s in source}
    for snap in sorted(target, key=lambda s: s.index, reverse=True):
        if snap.key in by_key:
            return by_key[snap.key], snap
    return None


def aside_name(target: str, now: dt.datetime) -> str:
    return f"{target}-diverged-{now.astimezone(dt.UTC):%Y%m%d%H%M%S}"


def plan_replication(
    *,
    source: str,
    target: str,
    source_snapshots: Sequence[Snapshot],
    target_snapshots: Sequence[Snapshot] | None,
    now: dt.datetime,
    source_bookmarks: Sequence[Snapshot] = (),
    source_exists: bool = True,
) -> ReplicationPlan:
    """Full, incremental, up to date, or diverged.

    ``target_snapshots`` is None when the target dataset does not exist. A first run sends
    the oldest source snapshot in full, then every later one with ``-I``, so the target
    has the source's history. ``source_bookmarks`` (OpenZFS) let an incremental start from
    a bookmark when the base snapshot itself was destroyed on the source.
    """
    plan = ReplicationPlan(kind="up_to_date", source=source, target=target)
    src = sorted(source_snapshots, key=lambda s: s.index)
    if not source_exists:
        plan.kind = "diverged"
        plan.divergence = Divergence(
            kind="source_renamed",
            reason=f"the source dataset {source} no longer exists (renamed, moved or destroyed)",
            target_only=[s.short for s in target_snapshots or ()],
        )
        return plan
    if not src:
        plan.kind = "nothing_to_send"
        return plan
    newest = plan.source_newest = src[-1]
    if target_snapshots is None:
        plan.kind = "full"
        plan.steps.append(SendStep(snapshot=src[0].name))
        if len(src) > 1:
            plan.steps.append(SendStep(snapshot=newest.name, base=src[0].name))
        return plan
    tgt = sorted(target_snapshots, key=lambda s: s.index)
    source_keys = {s.key for s in src}
    source_names = {s.short: s for s in src}
    clashes = [t.short for t in tgt if t.short in source_names and t.key not in source_keys]
    common = newest_common(src, tgt)
    if common is None and source_bookmarks:
        # The base snapshot is gone on the source but a bookmark of it (same GUID) is not.
        marks = {m.guid: m for m in source_bookmarks}
        for snap in reversed(tgt):
            mark = marks.get(snap.guid)
            if mark is not None:
                plan.kind = "incremental"
                plan.target_common = snap
                plan.steps.append(
                    SendStep(snapshot=newest.name, base=mark.name, intermediates=False)
                )
                later = [t.short for t in tgt if t.index > snap.index]
                if later:
                    return _diverged(plan, src, tgt, None, snap, clashes, now, later)
                return plan
    if common is None:
        return _diverged(plan, src, tgt, None, None, clashes, now, [])
    src_common, tgt_common = common
    plan.common, plan.target_common = src_common, tgt_common
    later = [t.short for t in tgt if t.index > tgt_common.index]
    if later:
        return _diverged(plan, src, tgt, src_common, tgt_common, clashes, now, later)
    if src_common.index == newest.index:
        return plan
    plan.kind = "incremental"
    plan.steps.append(SendStep(snapshot=newest.name, base=src_common.name))
    return plan


def _diverged(plan, src, tgt, src_common, tgt_common, clashes, now, later) -> ReplicationPlan:
    target_keys = {t.key for t in tgt}
    source_keys = {s.key for s in src}
    divergence = Divergence(
        kind="snapshots_missing" if tgt_common is not None else "no_common",
        reason=(
            f"the target has snapshots the source lacks after the last common one: "
            f"{', '.join(later)}"
            if tgt_common is not None
            else "the target has no snapshot in common with the source (name and GUID)"
        ),
        last_common=tgt_common.short if tgt_common is not None else None,
        source_only=[s.short for s in src if s.key not in target_keys],
        target_only=[t.short for t in tgt if t.key not in source_keys],
        name_clashes=clashes,
    )
    if tgt_common is not None:
        divergence.fixes.append(
            RollbackToCommon(
                target=plan.target,
                snapshot=tgt_common.name,
                destroys=tuple(f"{plan.target}@{s}" for s in later),
            )
        )
    divergence.fixes.append(
        RenameAsideAndResend(target=plan.target, aside=aside_name(plan.target, now))
    )
    plan.kind = "diverged"
    plan.steps = []
    plan.common = src_common
    plan.divergence = divergence
    return plan
