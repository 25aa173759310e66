"""Running an approved divergence fix on the one dataset it names.

Target-side commands (rollback, rename aside, rename back, the children-then-parent
renames) run through ``pipeline.apply_fix``; what the job keeps on the dataset (the held
snapshot, the GUID it last received, where it pulls from) changes on that dataset's
``ReplicatedDataset`` row only. Only a non-recursive job following its own source to a
new name changes the job, as that dataset is the whole job.
"""

from django.db import transaction

from fleet_app.services import audit_record, audit_snapshot

from . import pipeline
from .divergence import Known
from .hosts import endpoints_open, host_user
from .models import Dataset, DivergenceReport, ReplicatedDataset, ReplicationJob
from .pipeline import Approval, Endpoint
from .planning import (
    ChildrenThenParent,
    Fix,
    RenameAsideAndResend,
    ResendFull,
    ResumeFromCommon,
    RetargetSource,
)


def _state(job: ReplicationJob, report: DivergenceReport) -> ReplicatedDataset:
    state, _ = ReplicatedDataset.objects.get_or_create(
        job=job,
        source_dataset=report.source_dataset,
        defaults={"target_dataset": report.target_dataset, "source_name": report.source_dataset},
    )
    return state


def _release_on_source(job: ReplicationJob, snapshot: str) -> list[str]:
    if not snapshot:
        return []
    with endpoints_open((job.source.host, snapshot.split("@", 1)[0])) as (src,):
        pipeline.release(src, job.hold_tag, snapshot)
    return [f"zfs release {job.hold_tag} {snapshot}"]


def fix_run(job: ReplicationJob, report: DivergenceReport, fix: Fix, approval: Approval):
    """Apply ``fix``; the commands run (or the change made), one per line."""
    if approval is None or not approval.by:
        raise pipeline.ApprovalRequired(
            f"'{fix.describe()}' needs a staff approval before it runs."
        )
    state = _state(job, report)
    forget = {"last_snapshot_guid": "", "held_snapshot": ""}
    if isinstance(fix, RetargetSource):
        return [_retarget(job, state, fix.new, report)]
    if isinstance(fix, ResendFull):
        ran = _release_on_source(job, fix.released)
        ReplicatedDataset.objects.filter(pk=state.pk).update(**forget)
        return [*ran, f"{state.source_dataset} will be sent in full to {fix.target}"]
    if isinstance(fix, ResumeFromCommon):
        ran = _release_on_source(job, fix.released)
        ReplicatedDataset.objects.filter(pk=state.pk).update(**forget)
        return [*ran, f"{state.source_dataset} goes on from {fix.snapshot}"]
    if isinstance(fix, ChildrenThenParent):
        return _children_then_parent(job, state, fix, approval)
    with endpoints_open((job.target.host, report.target_dataset)) as (tgt,):
        ran = pipeline.apply_fix(fix, target=tgt, approval=approval)
    if isinstance(fix, RenameAsideAndResend):
        # The target starts afresh: what it last received now lives aside, on purpose.
        ReplicatedDataset.objects.filter(pk=state.pk).update(last_snapshot_guid="")
    return ran


def _children_then_parent(job, state: ReplicatedDataset, fix: ChildrenThenParent, approval):
    """The parent alone to its staging name, then the renames (see ChildrenThenParent)."""
    with endpoints_open((job.source.host, state.source_name), (job.target.host, fix.staging)) as (
        src,
        tgt,
    ):
        assessment = pipeline.preflight(src, tgt, user=host_user(job.source.host))
        outcome = pipeline.replicate(
            src,
            tgt,
            hold_tag=job.hold_tag,
            assessment=assessment,
            known=Known(held=state.held_snapshot),
        )
        if outcome.plan.kind not in ("full", "incremental"):
            raise ValueError(f"The parent could not be sent to {fix.staging}: {outcome.plan.kind}.")
        final = Endpoint(tgt.runner, fix.target, tgt.pool)
        ran = [f"zfs send {outcome.plan.to_snapshot} | zfs receive {fix.staging}"]
        ran += pipeline.apply_fix(fix, target=final, approval=approval)
    newest = outcome.plan.source_newest
    ReplicatedDataset.objects.filter(pk=state.pk).update(
        last_snapshot=newest.short if newest else "",
        last_snapshot_guid=str(newest.guid) if newest else "",
        held_snapshot=outcome.held or "",
        last_bytes=outcome.bytes,
        total_bytes=state.total_bytes + outcome.bytes,
    )
    return ran


def _retarget(job, state: ReplicatedDataset, new: str, report: DivergenceReport) -> str:
    if job.recursive or state.source_dataset != job.source.name:
        # The change and its audit entry commit together, as on the job-wide branch below.
        with transaction.atomic():
            before = audit_snapshot(state)
            ReplicatedDataset.objects.filter(pk=state.pk).update(source_name=new)
            state.refresh_from_db()
            audit_record(
                actor=report.approved_by,
                action="zfs.dataset.retarget",
                obj=state,
                before=before,
                after=audit_snapshot(state),
            )
        return f"{state.source_dataset} of job {job.name} now pulls {new} (this dataset only)"
    with transaction.atomic():
        dataset, _ = Dataset.objects.get_or_create(host=job.source.host, name=new)
        before = audit_snapshot(job)
        ReplicationJob.objects.filter(pk=job.pk).update(source=dataset)
        ReplicatedDataset.objects.filter(pk=state.pk).update(source_dataset=new, source_name=new)
        DivergenceReport.objects.filter(pk=report.pk).update(source_dataset=new)
        job.refresh_from_db()
        audit_record(
            actor=report.approved_by,
            action="zfs.job.retarget",
            obj=job,
            before=before,
            after=audit_snapshot(job),
        )
    return f"job {job.name} now pulls {job.source.host.name}:{new}"
