"""Reaching storage hosts and reading them: the runner for a host, endpoints for
datasets, capability checks, and the previews of what a snapshot job or a replication
would do. Nothing here runs inside a transaction: a host may take seconds to answer.

Run rows, divergence and the tick (``services``) build on these; so do the admin's
previews and ``manage.py zfs_plan``.
"""

import datetime as dt
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from fleet_app.errors import InvalidInput
from fleet_app.runs import task_enqueue

from . import pipeline
from .capabilities import Assessment, detect_permissions, detect_pool
from .models import Dataset, ReplicationJob, StorageHost
from .pipeline import Endpoint
from .planning import ReplicationPlan, SendStep, SnapshotPlan
from .runner import HostUnreachable, LocalRunner, Runner, SshRunner

STORAGE_HOST_CHECK_TASK = "backups_app.zfs.tasks.storage_host_check"
REPLICATION_JOB_ASSESS_TASK = "backups_app.zfs.tasks.replication_job_assess"


def host_runner(host: StorageHost) -> Runner:
    """The runner for ``host``. What it executes (the zfs and zpool binaries, ssh and the
    private key) is this worker's settings; the row only says where to connect."""
    if host.is_local:
        return LocalRunner(zfs_path=settings.ZFS_BIN, zpool_path=settings.ZPOOL_BIN)
    if not host.is_reachable:
        raise HostUnreachable(
            host.name,
            "not named in ZFS_LOCAL_HOSTS, and without the address, user and host key "
            "to reach it over SSH.",
        )
    if not settings.ZFS_SSH_KEY_PATH:
        raise HostUnreachable(host.name, "ZFS_SSH_KEY_PATH is not set on this worker.")
    try:
        return SshRunner(
            host=host.address,
            port=host.port,
            user=host.user,
            key_path=settings.ZFS_SSH_KEY_PATH,
            host_key=host.host_key,
            zfs_path=settings.ZFS_BIN,
            zpool_path=settings.ZPOOL_BIN,
            ssh_path=settings.ZFS_SSH_BIN,
            connect_timeout=settings.ZFS_SSH_CONNECT_TIMEOUT,
        )
    except ValueError as exc:
        raise HostUnreachable(host.name, str(exc)) from None


@contextmanager
def endpoints_open(*pairs: tuple[StorageHost, str]) -> Iterator[list[Endpoint]]:
    """Endpoints for (host, dataset) pairs, one runner per host, all closed at the end."""
    with ExitStack() as stack:
        runners: dict[int, Runner] = {}
        result = []
        for host, name in pairs:
            if host.pk not in runners:
                runners[host.pk] = stack.enter_context(host_runner(host))
            result.append(Endpoint(runners[host.pk], name))
        yield result


def host_user(host: StorageHost) -> str:
    return "root" if host.is_local else host.user


# --- Capabilities ---------------------------------------------------------------------------


def storage_host_check(*, host: StorageHost, dataset: str | None = None) -> dict:
    """Detect the pools of ``host``'s datasets and what its user may do; store and return."""
    names = [dataset] if dataset else list(host.datasets.values_list("name", flat=True))
    found: dict = {"pools": {}, "permissions": {}}
    with host_runner(host) as runner:
        for name in names:
            pool = name.split("/", 1)[0]
            if pool not in found["pools"]:
                found["pools"][pool] = detect_pool(runner, name).as_dict()
            found["permissions"][name] = detect_permissions(
                runner, name, user=host_user(host)
            ).as_dict()
    StorageHost.objects.filter(pk=host.pk).update(capabilities=found, checked_at=timezone.now())
    return found


def assessment_save(job: ReplicationJob, assessment: Assessment, src: Endpoint) -> None:
    now = timezone.now()
    ReplicationJob.objects.filter(pk=job.pk).update(
        guarantee=assessment.guarantee,
        refusal="\n".join(assessment.refusals),
        assessed_at=now,
    )
    host = job.source.host
    caps = dict(host.capabilities or {})
    caps.setdefault("pools", {})[src.pool.pool] = src.pool.as_dict()
    if assessment.permissions is not None:
        caps.setdefault("permissions", {})[src.dataset] = assessment.permissions.as_dict()
    StorageHost.objects.filter(pk=host.pk).update(capabilities=caps, checked_at=now)


def replication_job_assess(*, job: ReplicationJob) -> Assessment:
    """Detect both sides and store the guarantee (or the refusal) on the job."""
    job = ReplicationJob.objects.select_related("source__host", "target__host").get(pk=job.pk)
    with endpoints_open((job.source.host, job.source.name), (job.target.host, job.target.name)) as (
        src,
        tgt,
    ):
        assessment = pipeline.preflight(src, tgt, user=host_user(job.source.host))
    assessment_save(job, assessment, src)
    return assessment


def storage_host_check_enqueue(*, host: StorageHost) -> None:
    """Check ``host`` in a worker (SSH may take a while), after commit."""
    task_enqueue(STORAGE_HOST_CHECK_TASK, host.pk)


def replication_job_assess_enqueue(*, job: ReplicationJob) -> None:
    """Assess ``job`` in a worker (both hosts are asked), after commit."""
    task_enqueue(REPLICATION_JOB_ASSESS_TASK, job.pk)


# --- Previews (read only) ---------------------------------------------------------------------


def snapshot_plan_preview(*, dataset: Dataset, now: dt.datetime | None = None) -> SnapshotPlan:
    """What the snapshot job would create and destroy now (reads only)."""
    if dataset.policy is None:
        raise InvalidInput(f"{dataset} has no snapshot policy.")
    jobs = list(dataset.replicated_to.select_related("target__host"))
    pairs = [(dataset.host, dataset.name)] + [(j.target.host, j.target.name) for j in jobs]
    with endpoints_open(*pairs) as endpoints:
        targets = {str(j.target): e for j, e in zip(jobs, endpoints[1:], strict=True)}
        return pipeline.snapshot_plan(
            endpoints[0], policy=dataset.policy.as_policy(), now=now, targets=targets
        )


@dataclass(frozen=True)
class ReplicationPreview:
    """What a replication of a job would do now: its plan and, per send step, the send
    argv on the source and the receive argv on the target."""

    plan: ReplicationPlan
    steps: list[tuple[SendStep, list[str], list[str]]]


def replication_plan_preview(*, job: ReplicationJob) -> ReplicationPreview:
    """Plan the job's replication against what both hosts hold now (reads only)."""
    with endpoints_open((job.source.host, job.source.name), (job.target.host, job.target.name)) as (
        src,
        tgt,
    ):
        plan = pipeline.plan(src, tgt)
        steps = [(step, *pipeline.step_commands(src, tgt, step)) for step in plan.steps]
    return ReplicationPreview(plan=plan, steps=steps)
