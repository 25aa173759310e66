"""Telling how a target diverged, from ZFS's state and the whole of its error text.

The planner (``planning``) sees names and GUIDs; this module adds what only the hosts can
say: where a dataset moved (a snapshot's GUID survives ``zfs rename``), what the job last
received (a target that lost it was rolled back, one that lost itself was moved), whether
the target was written to since its newest snapshot (``written`` where ZFS has it, else
the receive's own words, read across every line). Each kind gets its own report and its
own fixes, and every fix names one dataset: a fix never touches a sibling or the job.

Kinds: ``target_modified``, ``target_rolled_back``, ``source_renamed``, ``target_moved``,
``snapshots_missing``, ``no_common``.
"""

import datetime as dt
import re
from dataclasses import dataclass, field

from . import commands
from .names import pool_of, split_snapshot
from .parsers import Snapshot
from .planning import (
    ChildrenThenParent,
    Divergence,
    Fix,
    RenameAsideAndResend,
    RenameBack,
    ReplicationPlan,
    ResendFull,
    ResumeFromCommon,
    RetargetSource,
    RollbackToCommon,
    aside_name,
)
from .runner import Runner

# "cannot receive incremental stream: destination tank/x has been modified\nsince most
# recent snapshot": zfs wraps the sentence, so it is matched on the joined text.
_MODIFIED_RE = re.compile(r"has\s+been\s+modified\s+since\s+(?:the\s+)?most\s+recent\s+snapshot")


@dataclass
class Known:
    """What the job recorded on this dataset after its last success."""

    guid: int | None = None  # GUID of the newest snapshot the target received
    snapshot: str = ""  # its short name
    held: str = ""  # the short name held with the job's tag on both sides


@dataclass
class Listed:
    """Both sides as one tree listing saw them (None: the dataset does not exist)."""

    source: list[Snapshot] | None
    target: list[Snapshot] | None
    target_children: list[str] = field(default_factory=list)
    target_written: int | None = None  # bytes written since the newest snapshot (OpenZFS)


def find_moved_dataset(runner: Runner, root: str, guids: set[int]) -> str | None:
    """The dataset under ``root`` whose snapshots carry one of ``guids``, or None."""
    if not guids:
        return None
    result = runner.zfs(commands.guids_under(root), check=False)
    if not result.ok:
        return None
    for line in result.stdout.splitlines():
        cells = line.split("\t")
        if len(cells) >= 3 and "@" in cells[0] and cells[2].isdigit() and int(cells[2]) in guids:
            return split_snapshot(cells[0])[0]
    return None


def receive_says_modified(stderr: str) -> bool:
    return bool(_MODIFIED_RE.search(" ".join(stderr.split())))


def target_modified(plan: ReplicationPlan, target: str, detail: str) -> Divergence:
    common = plan.target_common
    assert common is not None
    return Divergence(
        kind="target_modified",
        reason=f"the target {target} was modified since its newest snapshot "
        f"{common.short} ({detail})",
        last_common=common.short,
        fixes=[
            RollbackToCommon(
                target=target, snapshot=common.name, destroys=(f"changes since {common.short}",)
            ),
            RenameAsideAndResend(target=target, aside=aside_name(target, dt.datetime.now(dt.UTC))),
        ],
    )


def _stop(plan: ReplicationPlan, divergence: Divergence) -> None:
    plan.kind, plan.steps, plan.divergence = "diverged", [], divergence


def examine(
    plan: ReplicationPlan,
    *,
    source_runner: Runner,
    target_runner: Runner,
    source: str,
    target: str,
    listed: Listed,
    known: Known,
    now: dt.datetime,
) -> None:
    """Refine ``plan`` with the hosts' state (moved datasets, a rolled-back or modified
    target, children a rename would drag along)."""
    tgt = listed.target
    found = plan.divergence
    if found is not None and found.kind in ("source_renamed", "no_common") and tgt:
        moved = find_moved_dataset(source_runner, pool_of(source), {s.guid for s in tgt[-1:]})
        if moved and moved != source:
            d = found
            d.kind = "source_renamed"
            d.source_moved_to = moved
            d.reason += f"; the target's newest snapshot now lives in {moved}"
            d.fixes.insert(0, RetargetSource(old=source, new=moved))
            if listed.source is None:
                d.fixes.append(RenameAsideAndResend(target=target, aside=aside_name(target, now)))
    if tgt is None and known.guid:
        _target_moved(plan, target_runner, target, known)
        return
    found = plan.divergence
    if found is not None and found.kind == "no_common" and listed.target_children:
        d = found
        staging = f"{target}-new-{now.astimezone(dt.UTC):%Y%m%d%H%M%S}"
        d.fixes.insert(
            0,
            ChildrenThenParent(
                target=target,
                staging=staging,
                aside=aside_name(target, now),
                children=tuple(listed.target_children),
            ),
        )
        d.reason += (
            f"; its children {', '.join(c.rsplit('/', 1)[1] for c in listed.target_children)} "
            "would be dragged along by a rename"
        )
        return
    common = plan.target_common
    if plan.kind != "incremental" or common is None or tgt is None or plan.common is None:
        return
    base = plan.common
    if known.guid and known.guid != common.guid and known.guid not in {s.guid for s in tgt}:
        _stop(
            plan,
            Divergence(
                kind="target_rolled_back",
                reason=f"the target {target} was rolled back to {common.short}: it no longer "
                f"has {known.snapshot or 'the snapshot it last received'}",
                last_common=common.short,
                source_only=[s.short for s in listed.source or [] if s.index > base.index],
                fixes=[
                    ResumeFromCommon(
                        target=target,
                        snapshot=common.name,
                        released=f"{source}@{known.held}" if known.held else "",
                    ),
                    RenameAsideAndResend(target=target, aside=aside_name(target, now)),
                ],
            ),
        )
        return
    if listed.target_written:
        _stop(plan, target_modified(plan, target, f"written: {listed.target_written} bytes"))


def _target_moved(plan: ReplicationPlan, runner: Runner, target: str, known: Known) -> None:
    moved = find_moved_dataset(runner, pool_of(target), {known.guid} if known.guid else set())
    released = f"{plan.source}@{known.held}" if known.held else ""
    if moved:
        reason = (
            f"the target {target} is gone: the snapshot {known.snapshot} it last received "
            f"now lives in {moved} (moved on the target host)"
        )
        fixes: list[Fix] = [RenameBack(target=target, moved=moved), ResendFull(target, released)]
    else:
        reason = (
            f"the target {target} is gone and no dataset on its pool holds the snapshot "
            f"{known.snapshot} it last received (destroyed, or moved to another pool)"
        )
        fixes = [ResendFull(target, released)]
    last = known.snapshot or None
    _stop(plan, Divergence(kind="target_moved", reason=reason, last_common=last, fixes=fixes))
