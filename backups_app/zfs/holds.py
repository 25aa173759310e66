"""User holds on a dataset's snapshots: who placed each and why, and releasing one.

A hold blocks ``zfs destroy``. Cutover's holds are tagged ``cutover_job<N>``: job N keeps
the newest snapshot both sides share until the next success. A hold is *live* while that
job's dataset still names this snapshot as its base; on a dataset moved aside, a job that
moved on or was deleted, it is *abandoned* and may be released. Where ``zfs holds`` works
(OpenZFS) the tags come from ZFS; where it does not (zfs-fuse lacks its helper) the count
comes from ``userrefs`` and the tags from what Cutover recorded (the job's datasets, the
fixes that moved datasets aside).

Releasing is a staff decision: audited, refused for a live hold (disable the job or let
it move on first).
"""

import re
from dataclasses import dataclass

from django.db.models import Q

from fleet_app.errors import Conflict, InvalidInput
from fleet_app.models import User
from fleet_app.services import audit_record

from . import commands, pipeline
from .hosts import endpoints_open
from .models import Dataset, DivergenceReport, ReplicatedDataset, ReplicationJob
from .parsers import ParseError, parse_holds

_TAG_RE = re.compile(r"^cutover_job(\d+)$")


@dataclass(frozen=True)
class Hold:
    snapshot: str  # full name
    tag: str  # "" when ZFS cannot list tags and Cutover knows of none
    who: str
    why: str
    live: bool = False
    confirmed: bool = True  # the tag was listed by zfs holds (not inferred)

    @property
    def key(self) -> str:
        return f"{self.snapshot}|{self.tag}"


def _on_host(dataset: Dataset) -> Q:
    """Job datasets whose source or target is ``dataset`` (by the host's name)."""
    source = Q(job__source__host_id=dataset.host_id, source_name=dataset.name)
    target = Q(job__target__host_id=dataset.host_id, target_dataset=dataset.name)
    return source | target


def _explain(dataset: Dataset, short: str, tag: str) -> tuple[str, str, bool]:
    match = _TAG_RE.match(tag)
    if match is None:
        return f"another tool ({tag})", "not Cutover's hold: released by whoever placed it", False
    job = ReplicationJob.objects.filter(pk=int(match[1])).first()
    if job is None:
        return f"deleted job {match[1]}", "abandoned: the job no longer exists", False
    live = (
        ReplicatedDataset.objects.filter(_on_host(dataset), job=job, held_snapshot=short)
        .exclude(state=ReplicatedDataset.State.PENDING)
        .exists()
    )
    if live:
        return f"job {job.name}", "live: base of the job's next incremental", True
    return f"job {job.name}", "abandoned: the job's dataset moved on or was moved aside", False


def _candidates(dataset: Dataset) -> set[str]:
    """Tags Cutover may have placed on ``dataset`` (for hosts without ``zfs holds``)."""
    jobs = set(ReplicatedDataset.objects.filter(_on_host(dataset)).values_list("job_id", flat=True))
    for report in DivergenceReport.objects.filter(job__target__host_id=dataset.host_id).exclude(
        approved_fix=""
    ):
        fix = report.fix(report.approved_fix) or {}
        if dataset.name in (fix.get("aside"), fix.get("moved"), fix.get("target")):
            jobs.add(report.job_id)
    return {f"cutover_job{pk}" for pk in jobs}


def dataset_holds(*, dataset: Dataset) -> list[Hold]:
    """Every held snapshot of ``dataset`` with who placed the hold and why (reads only)."""
    with endpoints_open((dataset.host, dataset.name)) as (endpoint,):
        snapshots = [s for s in pipeline.list_snapshots(endpoint) or [] if s.userrefs > 0]
        if not snapshots:
            return []
        result = endpoint.runner.zfs(commands.holds([s.name for s in snapshots]), check=False)
    listed: dict[str, list[str]] | None = None
    if result.ok:
        try:
            listed = parse_holds(result.stdout)
        except ParseError:
            listed = None
    candidates = _candidates(dataset) if listed is None else set()
    holds = []
    for snap in snapshots:
        tags = listed.get(snap.name, []) if listed is not None else sorted(candidates)
        for tag in tags:
            who, why, live = _explain(dataset, snap.short, tag)
            holds.append(Hold(snap.name, tag, who, why, live, confirmed=listed is not None))
        unknown = snap.userrefs - (len(tags) if listed is not None else 0)
        if listed is not None and unknown > 0 or not tags:
            holds.append(
                Hold(snap.name, "", "unknown", f"{snap.userrefs} hold(s) ZFS cannot name here")
            )
    return holds


def hold_release(*, dataset: Dataset, snapshot: str, tag: str, actor: User) -> str:
    """Release one abandoned hold (audited); a live one is refused."""
    if not snapshot.startswith(dataset.name + "@") or not tag:
        raise InvalidInput(f"{snapshot} is not a snapshot of {dataset}, or no tag was given.")
    who, why, live = _explain(dataset, snapshot.split("@", 1)[1], tag)
    if live:
        raise Conflict(
            f"The hold {tag} on {snapshot} is {why} ({who}); disable the job or let it move on."
        )
    with endpoints_open((dataset.host, dataset.name)) as (endpoint,):
        endpoint.runner.zfs(commands.release(tag, snapshot))
    audit_record(
        actor=actor,
        action="zfs.hold.release",
        obj=dataset,
        after={"snapshot": snapshot, "tag": tag, "who": who, "why": why},
    )
    return f"zfs release {tag} {snapshot}"
