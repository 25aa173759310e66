"""Accounts: dedupe runs (merge or undo a confirmed plan), chunk by chunk."""

import datetime as dt
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from fleet_app import services as fleet
from fleet_app.errors import Conflict, InvalidInput
from fleet_app.locks import LockHeld, named_lock
from fleet_app.models import User
from fleet_app.runs import FINISHED_STATES, RunState, run_claim, run_finish, run_log, task_enqueue

from .checkpoint import dedupe_checkpoint_restore, dedupe_checkpoint_write
from .merge import MergeError, groups_merge, users_merge_undo
from .models import (
    DedupeJournal,
    DedupeReview,
    DedupeRun,
)
from .selectors import DuplicateGroup, dedupe_plan, duplicates_find, members_digest, plan_json

logger = logging.getLogger(__name__)


# --- Runs -----------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dedupe_run_is_dead(run: DedupeRun, *, now: dt.datetime | None = None) -> bool:
    """A running run whose worker died: no heartbeat for ``DEDUPE_RUN_DEAD_SECONDS``, or
    its process (on this host) is gone. Known within a minute, not the 24 hours after
    which ``runs_reap`` fails any run."""
    if run.state != RunState.RUNNING:
        return False
    now = now or timezone.now()
    beat = run.heartbeat_at or run.updated_at
    if beat < now - dt.timedelta(seconds=settings.DEDUPE_RUN_DEAD_SECONDS):
        return True
    host, _, pid = run.worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


def dedupe_runs_reap_dead() -> list[int]:
    """Fail the dedupe runs whose worker died, saying so; their journal and cursor stay,
    so each can be resumed (``--resume``), undone or restored from its checkpoint."""
    reaped = []
    for run in DedupeRun.objects.filter(state=RunState.RUNNING):
        if not dedupe_run_is_dead(run):
            continue
        beat = run.heartbeat_at or run.updated_at
        changed = DedupeRun.objects.filter(pk=run.pk, state=RunState.RUNNING).update(
            state=RunState.FAILED,
            phase=DEAD_PHASE,
            error=f"Its worker ({run.worker or 'unknown'}) died: no heartbeat since "
            f"{beat:%Y-%m-%d %H:%M:%S} UTC. Resume, undo or restore it.",
            finished_at=timezone.now(),
            updated_at=timezone.now(),
        )
        if changed:
            logger.warning("dedupe run %s: its worker died", run.pk)
            reaped.append(run.pk)
    return reaped


# The phase of a run failed because its worker died (``--resume`` picks it up again).
DEAD_PHASE = "worker died"


def _refuse_if_active() -> None:
    dedupe_runs_reap_dead()
    active = DedupeRun.objects.filter(state__in=(RunState.PENDING, RunState.RUNNING)).first()
    if active is not None:
        raise Conflict(f"Dedupe run {active.pk} is still {active.state}; wait until it ends.")


def dedupe_heartbeat(run: DedupeRun) -> None:
    """The worker is alive and this is it (host and process id)."""
    DedupeRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now(),
        worker=f"{socket.gethostname()}:{os.getpid()}",
        updated_at=timezone.now(),
    )


def dedupe_run_create(
    *,
    actor: User | None,
    plan: list[dict[str, Any]],
    delete: bool = False,
    prefer: Iterable[int] = (),
    chunk_size: int = 200,
) -> DedupeRun:
    """Write a pending merge run for a confirmed plan (``plan_json`` of ``dedupe_plan``)."""
    _refuse_if_active()
    run = DedupeRun.objects.create(
        kind=DedupeRun.Kind.MERGE,
        plan=plan,
        prefer=sorted(prefer),
        delete_duplicates=delete,
        total=len(plan),
        chunk_size=chunk_size,
        phase="queued",
        created_by=actor if actor is not None and actor.pk else None,
    )
    fleet.audit_record(
        actor=actor,
        action="dedupe.start",
        obj=run,
        after={"groups": len(plan), "delete": delete, "prefer": sorted(prefer)},
    )
    return run


def dedupe_undo_create(
    *, actor: User | None, run: DedupeRun, force: bool = False, chunk_size: int = 200
) -> DedupeRun:
    """Write a pending undo run over the merged groups of ``run``, newest group first."""
    if run.kind != DedupeRun.Kind.MERGE:
        raise InvalidInput(f"Run {run.pk} is an undo run; only a merge run can be undone.")
    if dedupe_run_is_dead(run):
        dedupe_runs_reap_dead()
        run.refresh_from_db()
    if run.restored_at is not None:
        raise Conflict(f"Run {run.pk} was restored from its checkpoint; there is nothing to undo.")
    if run.state not in FINISHED_STATES:
        raise Conflict(f"Run {run.pk} is still {run.state}; undo it once it has finished.")
    if run.undone_at is not None:
        raise Conflict(f"Run {run.pk} was already undone on {run.undone_at:%Y-%m-%d %H:%M}.")
    _refuse_if_active()
    journal_ids = list(
        run.journal.filter(state=DedupeJournal.State.MERGED)
        .order_by("-position")
        .values_list("pk", flat=True)
    )
    undo = DedupeRun.objects.create(
        kind=DedupeRun.Kind.UNDO,
        undo_of=run,
        plan=journal_ids,
        total=len(journal_ids),
        chunk_size=chunk_size,
        force=force,
        phase="queued",
        created_by=actor if actor is not None and actor.pk else None,
    )
    fleet.audit_record(
        actor=actor,
        action="dedupe.undo",
        obj=undo,
        after={"undo_of": run.pk, "groups": len(journal_ids), "force": force},
    )
    return undo


def _enqueue(run: DedupeRun, queue: str | None) -> None:
    # The queue goes twice: as the task's second argument, so the chunk after this one is
    # sent to it as well, and as the routing of this message. By default the routes decide.
    task_enqueue(DedupeRun.task_name, run.pk, queue, queue=queue)


@transaction.atomic
def dedupe_run_start(
    *,
    actor: User | None,
    plan: list[dict[str, Any]] | None = None,
    delete: bool = False,
    prefer: Iterable[int] = (),
    queue: str | None = None,
) -> DedupeRun:
    """Create a merge run (the current plan unless one is given) and enqueue it after
    commit; ``queue`` sends it to a named Celery queue."""
    prefer = list(prefer)
    if plan is None:
        plan = plan_json(dedupe_plan(duplicates_find(with_owned=False), prefer=prefer))
    run = dedupe_run_create(actor=actor, plan=plan, delete=delete, prefer=prefer)
    _enqueue(run, queue)
    return run


@transaction.atomic
def dedupe_undo_start(
    *, actor: User | None, run: DedupeRun, force: bool = False, queue: str | None = None
) -> DedupeRun:
    """Create an undo run for ``run`` and enqueue it after commit."""
    undo = dedupe_undo_create(actor=actor, run=run, force=force)
    _enqueue(undo, queue)
    return undo


def _step_done(run: DedupeRun, position: int, *, ok: bool, count: int = 1) -> None:
    now = timezone.now()
    DedupeRun.objects.filter(pk=run.pk).update(
        cursor=position + 1,
        done=models.F("done") + (count if ok else 0),
        failed=models.F("failed") + (0 if ok else count),
        updated_at=now,
        heartbeat_at=now,
    )


def _error_text(error: Exception) -> str:
    return str(error) if isinstance(error, MergeError) else f"{type(error).__name__}: {error}"


def _merge_positions(run: DedupeRun, positions: list[int]) -> list[tuple[int, bool, str]]:
    """Merge a chunk of groups in one transaction; if any fails, each group alone, so a
    failing group fails by itself and the others go on."""
    done = set(
        DedupeJournal.objects.filter(run=run, position__in=positions).values_list(
            "position", flat=True
        )
    )
    todo = [p for p in positions if p not in done]  # a redelivered chunk: skip what is done
    if not todo:
        with transaction.atomic():
            _step_done(run, positions[-1], ok=True, count=0)
        return [(p, True, "") for p in positions]
    if len(todo) > 1:
        try:
            with transaction.atomic():
                groups_merge(
                    run=run, positions=todo, delete=run.delete_duplicates, actor=run.created_by
                )
                _step_done(run, positions[-1], ok=True, count=len(todo))
            return [(p, True, "") for p in positions]
        except Exception:  # retried group by group, where a failing group fails alone
            results = [result for p in todo for result in _merge_positions(run, [p])]
            with transaction.atomic():
                _step_done(run, positions[-1], ok=True, count=0)
            return results
    position = todo[0]
    group = run.plan[position]
    try:
        with transaction.atomic():
            groups_merge(
                run=run, positions=[position], delete=run.delete_duplicates, actor=run.created_by
            )
            _step_done(run, position, ok=True)
    except Exception as error:  # any failure fails this group alone
        message = _error_text(error)
        logger.warning("dedupe run %s: group %s failed: %s", run.pk, group["email"], message)
        with transaction.atomic():
            DedupeJournal.objects.create(
                run=run,
                position=position,
                email_key=group["email"],
                survivor_id=group["survivor"],
                merged_ids=group["others"],
                state=DedupeJournal.State.FAILED,
                error=message[:10000],
            )
            _step_done(run, position, ok=False)
        run_log(run, f"group {group['email']} failed: {message}")
        return [(position, False, message)]
    return [(position, True, "")]


def _undo_position(run: DedupeRun, position: int) -> tuple[bool, str]:
    journal_id = run.plan[position]
    entry = DedupeJournal.objects.filter(pk=journal_id).first()
    if entry is None or entry.state == DedupeJournal.State.UNDONE:
        with transaction.atomic():
            _step_done(run, position, ok=True)
        return True, ""
    try:
        with transaction.atomic():
            users_merge_undo(journal_id=journal_id, actor=run.created_by, force=run.force)
            _step_done(run, position, ok=True)
        return True, ""
    except Exception as error:  # any failure fails this group alone
        message = _error_text(error)
        with transaction.atomic():
            _step_done(run, position, ok=False)
        run_log(run, f"undo of group {entry.email_key} failed: {message}")
        return False, message


def dedupe_run_step(
    *, run_id: int, progress: Callable[[int, bool, str], None] | None = None
) -> bool:
    """Work through one chunk of the run; True if more remains.

    A merge run writes its checkpoint first. Each group is its own transaction, which
    also advances the cursor, so a redelivered chunk starts after the last group done.
    """
    run = DedupeRun.objects.select_related("created_by").get(pk=run_id)
    dedupe_heartbeat(run)
    if run.kind == DedupeRun.Kind.MERGE and run.phase in ("", "queued"):
        rows = dedupe_checkpoint_write(run=run)
        DedupeRun.objects.filter(pk=run.pk).update(phase="merging", updated_at=timezone.now())
        run_log(run, f"checkpoint written: {rows} row(s) of {len(run.plan)} group(s)")
    elif run.kind == DedupeRun.Kind.UNDO and run.phase in ("", "queued"):
        DedupeRun.objects.filter(pk=run.pk).update(phase="restoring", updated_at=timezone.now())
    run.refresh_from_db(fields=["cursor", "phase"])
    end = min(len(run.plan), run.cursor + max(1, run.chunk_size))
    positions = list(range(run.cursor, end))
    if run.kind == DedupeRun.Kind.MERGE:
        results = _merge_positions(run, positions) if positions else []
    else:
        results = [(p, *_undo_position(run, p)) for p in positions]
    for position, ok, message in results:
        if progress is not None:
            progress(position, ok, message)
    return end < len(run.plan)


def dedupe_run_finish(*, run_id: int) -> DedupeRun:
    run = DedupeRun.objects.get(pk=run_id)
    state = run_finish(run)
    if run.kind == DedupeRun.Kind.UNDO and state == RunState.SUCCEEDED:
        DedupeRun.objects.filter(pk=run.undo_of_id).update(undone_at=timezone.now())
    run_log(run, f"finished {state}: {run.done} group(s) done, {run.failed} failed")
    run.refresh_from_db()
    return run


def dedupe_run_fail(*, run_id: int, error: str) -> None:
    run = DedupeRun.objects.filter(pk=run_id).first()
    if run is not None and not run.is_finished:
        run_finish(run, error=error)


def dedupe_run_work(*, run: DedupeRun, queue: str | None = None) -> str:
    """Do one chunk of groups of a claimed run, then send the next chunk or finish it.

    Holds the lock of the ``dedupe_users`` command. The checkpoint is written by the first
    chunk, before any change. A redelivered or duplicate message is harmless: each group
    advances the cursor in its own transaction. Without a broker (tasks run in-process)
    the chunks are looped here, since a message per chunk would recurse once per chunk.
    """
    in_process = settings.CELERY_TASK_ALWAYS_EAGER
    try:
        with named_lock("dedupe_users"):
            more = dedupe_run_step(run_id=run.pk)
            while more and in_process:
                more = dedupe_run_step(run_id=run.pk)
    except LockHeld:
        error = "Another dedupe (a dedupe_users command) holds the lock."
        if in_process:
            dedupe_run_fail(run_id=run.pk, error=error)
            return RunState.FAILED
        # The command ends on its own: retried with backoff like any transient error.
        raise TimeoutError(error) from None
    if more:
        _enqueue(run, queue)
        return RunState.RUNNING
    return dedupe_run_finish(run_id=run.pk).state


def dedupe_run_process(
    *, run: DedupeRun, progress: Callable[[int, bool, str], None] | None = None
) -> DedupeRun:
    """Run a whole run in this process (the command); the worker does it chunk by chunk."""
    if not run_claim(run):
        return run
    try:
        while dedupe_run_step(run_id=run.pk, progress=progress):
            pass
    except BaseException as error:
        dedupe_run_fail(run_id=run.pk, error=f"{type(error).__name__}: {error}")
        raise
    return dedupe_run_finish(run_id=run.pk)


# --- The review queue -----------------------------------------------------------------------


def dedupe_reviews_queue(*, groups: Iterable[DuplicateGroup], actor: User | None) -> int:
    """Put every group only one rule found (and not decided yet) into the review queue;
    returns how many were new. Nothing of such a group is merged until staff approve it."""
    waiting = [g for g in groups if g.needs_review and g.review_id is None]
    if not waiting:
        return 0
    rows = [
        DedupeReview(
            members=members_digest(g.ids),
            accounts=g.ids,
            emails=[a.email for a in sorted(g.accounts, key=lambda a: a.id)],
            rule=g.rule,
            reason=g.differs_by,
            survivor_id=g.survivor_id,
        )
        for g in waiting
    ]
    with transaction.atomic():
        before = DedupeReview.objects.count()
        DedupeReview.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
        new = DedupeReview.objects.count() - before
        if new:
            fleet.audit_record(
                actor=actor,
                action="dedupe.review_queued",
                after={"groups": new, "reasons": dict(Counter(g.differs_by for g in waiting))},
            )
    return new


@transaction.atomic
def dedupe_review_decide(
    *, review: DedupeReview, actor: User | None, approve: bool, survivor_id: int | None = None
) -> DedupeReview:
    """A staff decision on a queued group: ``approve`` it (the next dedupe run merges it,
    into ``survivor_id`` if given) or keep its accounts apart for good."""
    review = DedupeReview.objects.select_for_update().get(pk=review.pk)
    if review.state not in (DedupeReview.State.PENDING, DedupeReview.State.APPROVED):
        raise Conflict(f"Review {review.pk} is {review.get_state_display().lower()} already.")
    if survivor_id is not None and survivor_id not in review.accounts:
        raise InvalidInput(f"Account {survivor_id} is not in review {review.pk}'s group.")
    before = {"state": review.state, "survivor": review.survivor_id}
    review.state = DedupeReview.State.APPROVED if approve else DedupeReview.State.KEPT_APART
    if survivor_id is not None:
        review.survivor_id = survivor_id
    review.decided_at = timezone.now()
    review.decided_by = actor.email if actor is not None and actor.pk else "platform"
    review.save(update_fields=["state", "survivor_id", "decided_at", "decided_by"])
    fleet.audit_record(
        actor=actor,
        action="dedupe.review_approved" if approve else "dedupe.review_kept_apart",
        obj=review,
        before=before,
        after={"state": review.state, "survivor": review.survivor_id, "accounts": review.accounts},
    )
    return review


# --- Recovery -------------------------------------------------------------------------------


def _reaped(run: DedupeRun) -> DedupeRun:
    if dedupe_run_is_dead(run):
        dedupe_runs_reap_dead()
        run.refresh_from_db()
    return run


def dedupe_run_resume(*, run: DedupeRun, actor: User | None) -> DedupeRun:
    """Make a merge run whose worker died pending again: it goes on from its cursor (the
    groups merged before the death are in the journal and are not merged twice)."""
    run = _reaped(run)
    if run.kind != DedupeRun.Kind.MERGE or run.phase != DEAD_PHASE:
        raise Conflict(f"Run {run.pk} is {run.state}; only a run whose worker died is resumed.")
    if run.restored_at is not None or run.undone_at is not None:
        raise Conflict(f"Run {run.pk} was restored or undone; start a new run instead.")
    _refuse_if_active()
    DedupeRun.objects.filter(pk=run.pk).update(
        state=RunState.PENDING,
        phase="merging",
        error="",
        finished_at=None,
        heartbeat_at=None,
        updated_at=timezone.now(),
    )
    fleet.audit_record(actor=actor, action="dedupe.resume", obj=run, after={"cursor": run.cursor})
    run.refresh_from_db()
    return run


def dedupe_restore(*, run: DedupeRun, actor: User | None) -> dict[str, Any]:
    """Restore the checkpoint of a merge run (one whose worker died included); the
    caller holds the dedupe lock."""
    run = _reaped(run)
    if run.kind != DedupeRun.Kind.MERGE:
        raise InvalidInput(f"Run {run.pk} is an undo run; it has no checkpoint.")
    if not run.is_finished:
        raise Conflict(f"Run {run.pk} is still {run.state}; restore it once it has finished.")
    if run.restored_at is not None:
        raise Conflict(f"Run {run.pk} was already restored on {run.restored_at:%Y-%m-%d %H:%M}.")
    if run.undone_at is not None:
        raise Conflict(f"Run {run.pk} was undone on {run.undone_at:%Y-%m-%d %H:%M}.")
    if not run.checkpoints.exists():
        raise Conflict(f"Run {run.pk} has no checkpoint: it changed nothing.")
    return dedupe_checkpoint_restore(run=run, actor=actor)
