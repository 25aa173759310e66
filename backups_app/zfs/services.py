"""ZFS use cases that write: snapshot jobs, replication runs, the staff decisions on
divergence and the beat tick. Views, admin actions, commands and tasks call these; the
hosts are reached through ``hosts``.

Slow I/O (SSH, zfs send) never runs inside a transaction: a run row is claimed, the work
runs, and its result is written in short transactions of its own. One run per
(job, dataset) at a time is the database's rule (a partial unique index on active runs),
so two workers, two beats or a double click cannot start two. A run whose worker was
killed stays ``running`` with a stale ``updated_at`` (a transfer touches it every few
seconds); starting the job again marks it failed and starts afresh, and ZFS discards the
interrupted receive, so the job is re-runnable.
"""

import datetime as dt
import logging
from contextlib import suppress

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from fleet_app.errors import Conflict, InvalidInput
from fleet_app.models import User
from fleet_app.runs import RunState, run_enqueue, run_finish, run_progress, task_enqueue
from fleet_app.services import audit_record, audit_snapshot

from . import fixes, pipeline, replication
from .capabilities import SNAPSHOT_NEEDS, detect_permissions, snapshot_refusals
from .hosts import endpoints_open, snapshot_plan_preview
from .models import (
    ACTIVE_STATES,
    Dataset,
    DivergenceReport,
    ReplicationJob,
    ReplicationRun,
    SnapshotRun,
)
from .parsers import Snapshot
from .pipeline import Approval
from .planning import (
    ChildrenThenParent,
    RenameAsideAndResend,
    RenameBack,
    ResendFull,
    ResumeFromCommon,
    RetargetSource,
    RollbackToCommon,
)
from .runner import ZfsCommandError

logger = logging.getLogger(__name__)

DIVERGENCE_FIX_TASK = "backups_app.zfs.tasks.divergence_fix_apply"


def stale_after() -> dt.timedelta:
    """How long a running run may go without touching its row before it counts as lost."""
    return dt.timedelta(seconds=settings.ZFS_RUN_STALE_SECONDS)


def _snapshot_time(snapshot: Snapshot | None) -> dt.datetime | None:
    if snapshot is None:
        return None
    return dt.datetime.fromtimestamp(snapshot.creation, dt.UTC)


def _dataset_listed(dataset: Dataset, snapshots: list[Snapshot] | None) -> None:
    newest = snapshots[-1] if snapshots else None
    Dataset.objects.filter(pk=dataset.pk).update(
        newest_snapshot=newest.short if newest else "",
        newest_snapshot_at=_snapshot_time(newest),
        snapshot_count=len(snapshots or []),
        listed_at=timezone.now(),
    )


# --- Replication runs -------------------------------------------------------------------------


def replication_runs_reap(*, job: ReplicationJob | None = None) -> int:
    """Fail active runs whose worker stopped touching them (a running run's heartbeat
    touches its row every few seconds); their job can run again. The tick calls this every
    minute, so a killed worker's run says so within a minute or two."""
    now = timezone.now()
    stale = ReplicationRun.objects.filter(
        state__in=ACTIVE_STATES, updated_at__lt=now - stale_after()
    )
    if job is not None:
        stale = stale.filter(job=job)
    reaped = 0
    for run in stale.only("pk", "updated_at", "state"):
        reaped += ReplicationRun.objects.filter(pk=run.pk, state=run.state).update(
            state=RunState.FAILED,
            phase="lost",
            error=(
                f"Interrupted: the worker running this stopped (killed or lost); its last sign "
                f"of life was at {run.updated_at:%Y-%m-%d %H:%M:%S} UTC. Nothing half-received "
                "is kept by ZFS; the job can run again."
            ),
            finished_at=now,
            updated_at=now,
        )
    return reaped


def replication_run_start(
    *,
    job: ReplicationJob,
    actor: User | None = None,
    source_dataset: str | None = None,
    enqueue: bool = True,
) -> ReplicationRun:
    """Create a pending run for (job, dataset) and enqueue it after commit.

    Raises ``Conflict`` naming the active run when one is pending or running.
    """
    replication_runs_reap(job=job)
    source_dataset = source_dataset or job.source.name
    relative = source_dataset[len(job.source.name) :]
    try:
        with transaction.atomic():
            run = ReplicationRun.objects.create(
                job=job,
                source_dataset=source_dataset,
                target_dataset=job.target.name + relative,
                created_by=actor if actor is not None and actor.pk else None,
            )
            if actor is not None:
                audit_record(
                    actor=actor, action="zfs.replication.start", obj=run, after=audit_snapshot(run)
                )
            if enqueue:
                run_enqueue(run)
    except IntegrityError:
        active = ReplicationRun.objects.filter(
            job=job, source_dataset=source_dataset, state__in=ACTIVE_STATES
        ).first()
        raise Conflict(
            f"Job {job.name} is already replicating {source_dataset}"
            + (f" (run {active.pk}, {active.state})." if active else ".")
        ) from None
    return run


def replication_run_execute(*, run: ReplicationRun) -> str:
    """Run one claimed pull (the job's dataset, its whole tree for a recursive job, or one
    child after a fix) and record each dataset's outcome; returns the run's final state.

    Idempotent: a redelivered run plans again from what the two sides hold now, so a
    half-done transfer is neither repeated nor skipped.
    """
    return replication.run_execute(run)


# --- Divergence decisions ---------------------------------------------------------------------


def divergence_approve(
    *, report: DivergenceReport, fix: str, actor: User, enqueue: bool = True
) -> DivergenceReport:
    """Staff approve one of the offered fixes; the fix runs in a worker after commit."""
    with transaction.atomic():
        report = DivergenceReport.objects.select_for_update().get(pk=report.pk)
        if report.status != DivergenceReport.Status.OPEN:
            raise Conflict(f"Divergence report {report.pk} is {report.get_status_display()}.")
        if report.fix(fix) is None:
            offered = ", ".join(f["kind"] for f in report.fixes)
            raise InvalidInput(f"'{fix}' is not a fix offered here (offered: {offered}).")
        before = audit_snapshot(report)
        report.status = DivergenceReport.Status.APPROVED
        report.approved_fix = fix
        report.approved_by = actor
        report.approved_at = timezone.now()
        report.save(update_fields=["status", "approved_fix", "approved_by", "approved_at"])
        audit_record(
            actor=actor,
            action="zfs.divergence.approve",
            obj=report,
            before=before,
            after=audit_snapshot(report),
        )
        if enqueue:
            task_enqueue(DIVERGENCE_FIX_TASK, report.pk)
    return report


def divergence_dismiss(*, report: DivergenceReport, actor: User) -> DivergenceReport:
    with transaction.atomic():
        report = DivergenceReport.objects.select_for_update().get(pk=report.pk)
        if report.status != DivergenceReport.Status.OPEN:
            raise Conflict(f"Divergence report {report.pk} is {report.get_status_display()}.")
        before = audit_snapshot(report)
        report.status = DivergenceReport.Status.DISMISSED
        report.closed_at = timezone.now()
        report.save(update_fields=["status", "closed_at"])
        audit_record(
            actor=actor,
            action="zfs.divergence.dismiss",
            obj=report,
            before=before,
            after=audit_snapshot(report),
        )
    return report


def _fix_object(data: dict):
    kind = data["kind"]
    if kind == "rollback":
        return RollbackToCommon(
            target=data["target"],
            snapshot=data["snapshot"],
            destroys=tuple(data.get("destroys", ())),
        )
    if kind == "rename_aside":
        return RenameAsideAndResend(target=data["target"], aside=data["aside"])
    if kind == "retarget":
        return RetargetSource(old=data["old"], new=data["new"])
    if kind == "rename_back":
        return RenameBack(target=data["target"], moved=data["moved"])
    if kind == "resend_full":
        return ResendFull(target=data["target"], released=data.get("released", ""))
    if kind == "resume_from_common":
        return ResumeFromCommon(
            target=data["target"], snapshot=data["snapshot"], released=data.get("released", "")
        )
    if kind == "children_then_parent":
        return ChildrenThenParent(
            target=data["target"],
            staging=data["staging"],
            aside=data["aside"],
            children=tuple(data.get("children", ())),
        )
    raise InvalidInput(f"Unknown fix {kind!r}.")


def divergence_fix_apply(*, report_id: int, enqueue: bool = True) -> DivergenceReport:
    """Run the approved fix (once: the status is the claim) on its dataset alone, then
    start a run of that dataset alone: siblings and the job's definition stay as they are
    (a non-recursive job's own source following its data is the one job change)."""
    claimed = DivergenceReport.objects.filter(
        pk=report_id, status=DivergenceReport.Status.APPROVED
    ).update(status=DivergenceReport.Status.APPLYING)
    report = DivergenceReport.objects.select_related(
        "job__source__host", "job__target__host", "approved_by"
    ).get(pk=report_id)
    if not claimed:
        return report
    job = report.job
    fix = _fix_object(report.fix(report.approved_fix))
    approval = Approval(by=str(report.approved_by), at=report.approved_at)
    try:
        ran = fixes.fix_run(job, report, fix, approval)
        status, outcome = DivergenceReport.Status.APPLIED, "\n".join(ran)
    except (ZfsCommandError, ValueError, InvalidInput, pipeline.ReplicationError) as exc:
        status, outcome = DivergenceReport.Status.FAILED, str(exc)
    with transaction.atomic():
        before = audit_snapshot(report)
        report.status, report.outcome, report.closed_at = status, outcome, timezone.now()
        report.save(update_fields=["status", "outcome", "closed_at"])
        audit_record(
            actor=report.approved_by,
            action=f"zfs.divergence.{status}",
            obj=report,
            before=before,
            after=audit_snapshot(report),
        )
    if status == DivergenceReport.Status.APPLIED:
        job.refresh_from_db()
        report.refresh_from_db(fields=["source_dataset"])  # the job may follow its source
        with suppress(Conflict):
            replication_run_start(job=job, source_dataset=report.source_dataset, enqueue=enqueue)
    return report


# --- Snapshot jobs ----------------------------------------------------------------------------


def snapshot_run_start(
    *, dataset: Dataset, actor: User | None = None, enqueue: bool = True
) -> SnapshotRun:
    stale = SnapshotRun.objects.filter(
        dataset=dataset, state__in=ACTIVE_STATES, updated_at__lt=timezone.now() - stale_after()
    )
    stale.update(
        state=RunState.FAILED, phase="lost", error="The worker stopped.", finished_at=timezone.now()
    )
    try:
        with transaction.atomic():
            run = SnapshotRun.objects.create(
                dataset=dataset, created_by=actor if actor is not None and actor.pk else None
            )
            if enqueue:
                run_enqueue(run)
    except IntegrityError:
        raise Conflict(f"A snapshot job is already running on {dataset}.") from None
    return run


def _snapshot_next(dataset: Dataset) -> None:
    policy = dataset.policy
    minutes = policy.frequent_period if policy is not None and policy.frequently else 15
    Dataset.objects.filter(pk=dataset.pk).update(
        next_snapshot_at=timezone.now() + dt.timedelta(minutes=minutes)
    )


def _snapshot_refusals(dataset: Dataset) -> list[str]:
    """A remote dataset's operator must be a snapshot operator (named in words if not)."""
    policy = dataset.policy
    if dataset.host.is_local or policy is None or not (policy.autosnap or policy.autoprune):
        return []
    with endpoints_open((dataset.host, dataset.name)) as (endpoint,):
        perms = detect_permissions(
            endpoint.runner, dataset.name, user=dataset.host.user, needed=SNAPSHOT_NEEDS
        )
    return snapshot_refusals(perms, host=dataset.host.name, prune=policy.autoprune)


def snapshot_run_execute(*, run: SnapshotRun, now: dt.datetime | None = None) -> str:
    """Work one claimed snapshot run: plan, create and destroy, list what is left."""
    dataset = Dataset.objects.select_related("host", "policy").get(pk=run.dataset_id)
    policy = dataset.policy
    try:
        if policy is not None and policy.monitor_only:
            # The host's own sanoid takes and prunes: read what is there, whoever made it.
            run_progress(run, phase="listing")
            with endpoints_open((dataset.host, dataset.name)) as (endpoint,):
                _dataset_listed(dataset, pipeline.list_snapshots(endpoint))
            run_progress(run, phase="done (monitor only)")
            _snapshot_next(dataset)
            return run_finish(run)
        refusals = _snapshot_refusals(dataset)
        if refusals:
            run_progress(run, phase="refused")
            return run_finish(run, error="Refused: " + "; ".join(refusals))
        run_progress(run, phase="planning")
        plan = snapshot_plan_preview(dataset=dataset, now=now)
        run_progress(run, phase="applying", total=len(plan.create) + len(plan.destroy))
        with endpoints_open((dataset.host, dataset.name)) as (endpoint,):
            done = pipeline.snapshot_apply(endpoint, plan)
            listed = pipeline.list_snapshots(endpoint)
    except (ZfsCommandError, InvalidInput) as exc:
        return run_finish(run, error=str(exc))
    _dataset_listed(dataset, listed)
    _snapshot_next(dataset)
    SnapshotRun.objects.filter(pk=run.pk).update(
        created=done["created"],
        destroyed=done["destroyed"],
        refused=done["refused"],
        spared=plan.spared,
    )
    run_progress(
        run,
        phase="done",
        done=len(done["created"]) + len(done["destroyed"]),
        failed=len(done["refused"]),
    )
    return run_finish(run)


# --- The beat tick ----------------------------------------------------------------------------


def zfs_tick(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Start due snapshot jobs and due replication jobs (each claimed by moving its
    ``next_*_at`` forward with a conditional UPDATE, so two ticks start one run)."""
    now = now or timezone.now()
    started = {"snapshots": 0, "replications": 0}
    replication_runs_reap()
    for dataset in Dataset.objects.filter(policy__isnull=False, next_snapshot_at__lte=now):
        claimed = Dataset.objects.filter(
            pk=dataset.pk, next_snapshot_at=dataset.next_snapshot_at
        ).update(next_snapshot_at=now + dt.timedelta(minutes=5))
        if claimed:
            try:
                snapshot_run_start(dataset=dataset)
                started["snapshots"] += 1
            except Conflict:
                pass
    for job in ReplicationJob.objects.filter(enabled=True, next_run_at__lte=now).select_related(
        "source"
    ):
        claimed = ReplicationJob.objects.filter(pk=job.pk, next_run_at=job.next_run_at).update(
            next_run_at=now + dt.timedelta(minutes=job.every_minutes)
        )
        if claimed:
            try:
                replication_run_start(job=job)
                started["replications"] += 1
            except Conflict:
                pass
    return started
