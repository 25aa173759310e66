"""The pull pipeline: ``ssh operator@source zfs send … | zfs receive …`` on the target's
behalf, with bytes counted through the pipe, holds on the common snapshot on both sides,
and fixes for a diverged target executed only with an approval.
"""

import contextlib
import datetime as dt
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import commands
from .capabilities import (
    Assessment,
    PoolCapabilities,
    assess,
    detect_permissions,
    detect_pool,
)
from .divergence import Known, Listed, examine, receive_says_modified, target_modified
from .names import split_snapshot
from .parsers import Snapshot, parse_snapshot_list, snapshots_from_get
from .planning import (
    ChildrenThenParent,
    Divergence,
    Fix,
    Policy,
    RenameAsideAndResend,
    RenameBack,
    ReplicationPlan,
    RollbackToCommon,
    SendStep,
    SnapshotPlan,
    newest_common,
    plan_replication,
    plan_snapshots,
)
from .runner import Runner, ZfsCommandError

_CHUNK = 1 << 20
RENAME_BUSY_RETRIES = 10


class ReplicationError(RuntimeError):
    """A send or receive failed; the message carries both sides' whole error text."""

    def __init__(self, message: str, *, send_stderr: str = "", receive_stderr: str = ""):
        super().__init__(message)
        self.send_stderr, self.receive_stderr = send_stderr, receive_stderr


class ApprovalRequired(PermissionError):
    """A destructive fix was asked for without a staff approval."""


class PermissionRefused(PermissionError):
    """The remote user lacks a permission the job needs; the message names it."""


@dataclass
class Endpoint:
    """A dataset on a host, reached through ``runner``."""

    runner: Runner
    dataset: str
    pool: PoolCapabilities | None = None

    @property
    def label(self) -> str:
        return f"{self.runner.label}:{self.dataset}"


@dataclass(frozen=True)
class Approval:
    """Who approved a destructive fix, and when (kept on the run row and the audit log)."""

    by: str
    at: dt.datetime


@dataclass
class StepResult:
    step: SendStep
    bytes: int
    seconds: float


@dataclass
class Outcome:
    """What ``replicate`` did."""

    plan: ReplicationPlan
    steps: list[StepResult] = field(default_factory=list)
    resumed: bool = False
    held: str | None = None  # the short name of the snapshot now held on both sides

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.steps)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    @property
    def divergence(self) -> Divergence | None:
        return self.plan.divergence


# --- Listing ------------------------------------------------------------------------------


def list_snapshots(endpoint: Endpoint) -> list[Snapshot] | None:
    """The dataset's snapshots oldest first, or None when the dataset does not exist."""
    runner, dataset = endpoint.runner, endpoint.dataset
    parsable = endpoint.pool is not None and endpoint.pool.list_parsable
    args = commands.snapshots_list(dataset) if parsable else commands.snapshots_get(dataset)
    result = runner.zfs(args, check=False)
    if not result.ok:
        if "does not exist" in result.stderr:
            return None
        raise ZfsCommandError(runner.label, ["zfs", *args], result.returncode, result.stderr)
    if parsable:
        return parse_snapshot_list(result.stdout, commands.LIST_COLUMNS)
    return snapshots_from_get(result.stdout, dataset)


def list_bookmarks(endpoint: Endpoint) -> list[Snapshot]:
    if endpoint.pool is None or not endpoint.pool.bookmarks:
        return []
    out = endpoint.runner.zfs(commands.bookmarks_list(endpoint.dataset)).stdout
    marks = []
    for index, line in enumerate(out.splitlines()):
        name, guid, txg, creation = line.split("\t")
        marks.append(Snapshot(name, int(guid), int(creation), 0, index, int(txg)))
    return marks


def plan(
    source: Endpoint,
    target: Endpoint,
    *,
    now: dt.datetime | None = None,
    listed: Listed | None = None,
    known: Known | None = None,
) -> ReplicationPlan:
    """Plan from both sides' snapshots (listed here unless a tree listing gave them) and
    what the job recorded; nothing changes. Divergence is told apart by ``examine``."""
    now = now or dt.datetime.now(dt.UTC)
    if listed is None:
        src = list_snapshots(source)
        tgt = list_snapshots(target)
        children: list[str] = []
        if tgt is not None:
            out = target.runner.zfs(commands.dataset_names(target.dataset, recursive=True))
            children = [
                c for c in out.stdout.split() if c.count("/") == target.dataset.count("/") + 1
            ]
        listed = Listed(source=src, target=tgt, target_children=children)
    src = listed.source
    result = plan_replication(
        source=source.dataset,
        target=target.dataset,
        source_snapshots=src or [],
        target_snapshots=listed.target,
        now=now,
        source_bookmarks=list_bookmarks(source) if src is not None else [],
        source_exists=src is not None,
    )
    examine(
        result,
        source_runner=source.runner,
        target_runner=target.runner,
        source=source.dataset,
        target=target.dataset,
        listed=listed,
        known=known or Known(),
        now=now,
    )
    return result


# --- Transfer -----------------------------------------------------------------------------


def _pump(
    src_fd: int,
    dst_fd: int,
    on_bytes: Callable[[int], None] | None = None,
    every: float = 5.0,
) -> int:
    """Move everything from one pipe to the other, counting bytes (splice: no copy into
    Python where the kernel has it); ``on_bytes`` hears the count every ``every`` s."""
    moved = 0
    splice = getattr(os, "splice", None)
    reported = time.monotonic()
    while True:
        if on_bytes is not None and time.monotonic() - reported >= every:
            on_bytes(moved)
            reported = time.monotonic()
        try:
            if splice is not None:
                n = splice(src_fd, dst_fd, _CHUNK)
            else:
                data = os.read(src_fd, _CHUNK)
                n = len(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(dst_fd, view) :]
        except BrokenPipeError:
            return moved
        if n == 0:
            return moved
        moved += n


def transfer(
    source: Endpoint,
    target: Endpoint,
    send_args: list[str],
    receive_args: list[str],
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[int, float]:
    """Run ``send | receive`` between the two runners; (bytes, seconds) or raise."""
    began = time.monotonic()
    with tempfile.TemporaryFile() as send_err, tempfile.TemporaryFile() as recv_err:
        receiver = subprocess.Popen(  # noqa: S603 - argv lists
            target.runner.zfs_argv(receive_args), stdin=subprocess.PIPE, stderr=recv_err
        )
        sender = subprocess.Popen(  # noqa: S603
            source.runner.zfs_argv(send_args), stdout=subprocess.PIPE, stderr=send_err
        )
        try:
            moved = _pump(sender.stdout.fileno(), receiver.stdin.fileno(), on_bytes)
        finally:
            sender.stdout.close()
            with contextlib.suppress(BrokenPipeError):
                receiver.stdin.close()
        received = receiver.wait()
        if received != 0 and sender.poll() is None:
            sender.kill()
        sent = sender.wait()
        seconds = time.monotonic() - began
        if sent or received:
            send_err.seek(0), recv_err.seek(0)
            texts = {
                side: err.read().decode(errors="replace").strip()
                for side, err in (("send", send_err), ("receive", recv_err))
            }
            problems = [
                f"{side} exited {code}:\n{texts[side] or '(no error text)'}"
                for side, code in (("send", sent), ("receive", received))
                if code
            ]
            raise ReplicationError(
                "\n".join(problems), send_stderr=texts["send"], receive_stderr=texts["receive"]
            )
    return moved, seconds


def _receive_args(target: Endpoint, *, force: bool) -> list[str]:
    modern = target.pool is not None and target.pool.list_parsable
    return commands.receive(
        target.dataset,
        force=force,
        resumable=bool(target.pool and target.pool.resume_tokens),
        unmounted=modern,
    )


def step_commands(source: Endpoint, target: Endpoint, step: SendStep) -> tuple[list, list]:
    """The send and receive argv of one step (what a preview shows)."""
    send_args = commands.send(step.snapshot, base=step.base, intermediates=step.intermediates)
    return send_args, _receive_args(target, force=step.force)


def _resume(source: Endpoint, target: Endpoint, outcome: Outcome) -> None:
    """Finish an interrupted resumable receive (OpenZFS) before planning anything new."""
    if not (target.pool and target.pool.resume_tokens and source.pool.resume_tokens):
        return
    result = target.runner.zfs(commands.resume_token(target.dataset), check=False)
    token = result.stdout.strip() if result.ok else "-"
    if token in ("", "-"):
        return
    receive_args = _receive_args(target, force=False)
    moved, seconds = transfer(source, target, commands.send_resume(token), receive_args)
    outcome.resumed = True
    resumed = SendStep(snapshot=f"(resume token {token[:12]}…)")
    outcome.steps.append(StepResult(resumed, moved, seconds))


def _ignore(error: ZfsCommandError, *markers: str) -> None:
    if not any(m in error.stderr for m in markers):
        raise error


def hold(endpoint: Endpoint, tag: str, snapshot: str) -> None:
    try:
        endpoint.runner.zfs(commands.hold(tag, snapshot))
    except ZfsCommandError as exc:
        _ignore(exc, "tag already exists")


def release(endpoint: Endpoint, tag: str, snapshot: str) -> None:
    try:
        endpoint.runner.zfs(commands.release(tag, snapshot))
    except ZfsCommandError as exc:
        _ignore(exc, "no such tag", "does not exist", "could not find")


def move_holds(
    source: Endpoint, target: Endpoint, *, tag: str, new: str, previous: str | None
) -> None:
    """Hold ``new`` on both sides, then release ``previous``: never a moment without one."""
    for endpoint in (source, target):
        if endpoint.pool is None or endpoint.pool.holds:
            hold(endpoint, tag, f"{endpoint.dataset}@{new}")
    if previous and previous != new:
        for endpoint in (source, target):
            if endpoint.pool is None or endpoint.pool.holds:
                release(endpoint, tag, f"{endpoint.dataset}@{previous}")


def preflight(source: Endpoint, target: Endpoint, *, user: str) -> Assessment:
    """Detect both pools and the source user's permissions; fills ``endpoint.pool``."""
    source.pool = detect_pool(source.runner, source.dataset)
    target.pool = detect_pool(target.runner, target.dataset)
    perms = detect_permissions(source.runner, source.dataset, user=user)
    assessment = assess(
        source_pool=source.pool,
        target_pool=target.pool,
        source_perms=perms,
        source_label=source.runner.label,
    )
    assessment.permissions = perms
    return assessment


def replicate(
    source: Endpoint,
    target: Endpoint,
    *,
    hold_tag: str,
    now: dt.datetime | None = None,
    assessment: Assessment | None = None,
    on_step: Callable[[SendStep, int, float], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    listed: Listed | None = None,
    known: Known | None = None,
) -> Outcome:
    """Pull what the source has beyond the newest common snapshot; stop on divergence.

    Nothing on the target is destroyed or rolled back here: a diverged plan returns with
    its report and the fixes, which only ``apply_fix`` with an approval executes. A job
    whose ``assessment`` found a missing permission is refused before anything runs.
    """
    if assessment is not None and assessment.refused:
        raise PermissionRefused("; ".join(assessment.refusals))
    outcome = Outcome(plan=ReplicationPlan(kind="up_to_date", source="", target=""))
    _resume(source, target, outcome)
    known = known or Known()
    outcome.plan = current = plan(source, target, now=now, listed=listed, known=known)
    if current.kind in ("diverged", "nothing_to_send"):
        return outcome
    for step in current.steps:
        send_args, receive_args = step_commands(source, target, step)
        try:
            moved, seconds = transfer(source, target, send_args, receive_args, on_bytes)
        except ReplicationError as exc:
            # The whole receive error, every line of it: zfs wraps this sentence.
            if receive_says_modified(exc.receive_stderr) and current.target_common:
                current.kind, current.steps = "diverged", []
                current.divergence = target_modified(
                    current, target.dataset, "zfs receive: " + " ".join(exc.receive_stderr.split())
                )
                return outcome
            raise
        outcome.steps.append(StepResult(step, moved, seconds))
        if on_step is not None:
            on_step(step, moved, seconds)
    newest = current.to_snapshot or (current.common.name if current.common else None)
    if newest is None:
        return outcome
    short = split_snapshot(newest)[1]
    previous = known.held or (current.target_common.short if current.target_common else None)
    move_holds(source, target, tag=hold_tag, new=short, previous=previous)
    if source.pool is not None and source.pool.bookmarks:
        try:
            source.runner.zfs(commands.bookmark(newest, f"{source.dataset}#{short}"))
        except ZfsCommandError as exc:
            _ignore(exc, "already exists")
    outcome.held = short
    return outcome


# --- Fixes --------------------------------------------------------------------------------


def fix_commands(fix: Fix) -> list[list[str]]:
    """The ZFS commands a fix runs on the target (shown to staff before they approve).

    Renaming unmounts first: zfs-fuse refuses to rename a mounted dataset ("dataset is
    busy"), and on OpenZFS an explicit unmount fails cleanly where a process holds the
    mount instead of leaving a half-renamed tree. The aside copy stays unmounted.
    """
    if isinstance(fix, RollbackToCommon):
        if fix.destroys and all(d.startswith("changes since") for d in fix.destroys):
            return [commands.rollback(fix.snapshot, later=False)]
        return [commands.rollback(fix.snapshot)]
    if isinstance(fix, RenameAsideAndResend):
        return [commands.unmount(fix.target), commands.rename(fix.target, fix.aside)]
    if isinstance(fix, RenameBack):
        return [commands.unmount(fix.moved), commands.rename(fix.moved, fix.target)]
    if isinstance(fix, ChildrenThenParent):
        steps = []
        for child in fix.children:
            new = fix.staging + child[len(fix.target) :]
            steps += [commands.unmount(child), commands.rename(child, new)]
        steps += [commands.unmount(fix.target), commands.rename(fix.target, fix.aside)]
        return [*steps, commands.unmount(fix.staging), commands.rename(fix.staging, fix.target)]
    return []


def apply_fix(fix: Fix, *, target: Endpoint, approval: Approval | None) -> list[str]:
    """Run an approved fix on the target; the next ``replicate`` then sends as planned.

    Refuses without an approval: these commands destroy (rollback) or move (rename) data
    staff may still need.
    """
    if approval is None or not approval.by:
        raise ApprovalRequired(f"'{fix.describe()}' needs a staff approval before it runs.")
    if not fix_commands(fix):
        return []  # a change of the job's state (retarget, resend), made by the caller
    if getattr(fix, "target", None) != target.dataset:
        raise ValueError(f"The fix is for {fix.target}, not {target.dataset}.")
    ran = []
    for args in fix_commands(fix):
        for attempt in range(RENAME_BUSY_RETRIES + 1):
            try:
                target.runner.zfs(args)
                break
            except ZfsCommandError as exc:
                if args[0] == "unmount":
                    _ignore(exc, "not currently mounted")
                    break
                # zfs-fuse may report a dataset it has just unmounted busy for a moment.
                if "dataset is busy" not in exc.stderr or attempt == RENAME_BUSY_RETRIES:
                    raise
                time.sleep(0.5)
        ran.append(" ".join(["zfs", *args]))
    return ran


# --- Snapshot jobs --------------------------------------------------------------------------


def shared_bases(
    source: list[Snapshot], targets: dict[str, list[Snapshot] | None]
) -> dict[str, str | None]:
    """For each target label, the short name of the newest snapshot it shares with the
    source (name and GUID): the base of its next incremental, which pruning must spare."""
    shared: dict[str, str | None] = {}
    for label, snapshots in targets.items():
        common = newest_common(source, snapshots or [])
        shared[label] = common[0].short if common else None
    return shared


def snapshot_plan(
    endpoint: Endpoint,
    *,
    policy: Policy,
    now: dt.datetime | None = None,
    targets: dict[str, Endpoint] | None = None,
) -> SnapshotPlan:
    """List the dataset (and each replication target) and plan snapshots to take and prune."""
    now = now or dt.datetime.now(dt.UTC)
    snapshots = list_snapshots(endpoint) or []
    listed = {label: list_snapshots(t) for label, t in (targets or {}).items()}
    return plan_snapshots(
        dataset=endpoint.dataset,
        policy=policy,
        snapshots=snapshots,
        now=now,
        shared_with_targets=shared_bases(snapshots, listed),
    )


def snapshot_apply(endpoint: Endpoint, plan: SnapshotPlan) -> dict[str, list[str]]:
    """Take the planned snapshots, then destroy the planned ones (each checked again: a
    hold placed since the plan makes ZFS refuse, and that refusal is kept, not raised)."""
    done: dict[str, list[str]] = {"created": [], "destroyed": [], "refused": []}
    for name in plan.create:
        endpoint.runner.zfs(commands.snapshot(name))
        done["created"].append(name)
    for snap in plan.destroy:
        result = endpoint.runner.zfs(commands.destroy_snapshot(snap.name), check=False)
        if result.ok:
            done["destroyed"].append(snap.name)
        else:
            done["refused"].append(f"{snap.name}: {result.stderr.strip()}")
    return done
