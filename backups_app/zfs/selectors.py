"""Read side of ZFS: freshness of snapshots per dataset and health of replication jobs,
as sanoid's ``--monitor-snapshots`` states (OK / WARN / CRIT). ``zfs_check``, the
dashboard and the Prometheus metrics all read these, so they always agree.

Everything here reads what the last runs recorded (no SSH): a check is instant and a
scrape never waits on a host.
"""

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, F, OuterRef, Q, Subquery
from django.utils import timezone

from fleet_app.runs import RunState

from .models import Dataset, DivergenceReport, ReplicatedDataset, ReplicationJob, ReplicationRun

OK, WARN, CRIT = 0, 1, 2
LABELS = {OK: "OK", WARN: "WARN", CRIT: "CRIT"}

# sanoid's defaults where it has them (hourly 90m/360m, daily 28h/32h, monthly 32d/40d);
# the same spirit for the others. Minutes.
DEFAULT_THRESHOLDS = {
    "frequently": (None, None),  # from frequent_period: 2× and 4×
    "hourly": (90, 360),
    "daily": (28 * 60, 32 * 60),
    "weekly": (8 * 24 * 60, 10 * 24 * 60),
    "monthly": (32 * 24 * 60, 40 * 24 * 60),
    "yearly": (370 * 24 * 60, 400 * 24 * 60),
}


@dataclass
class Check:
    kind: str  # "dataset" or "job"
    name: str
    state: int
    message: str
    age_seconds: float | None = None
    lag_seconds: float | None = None

    @property
    def label(self) -> str:
        return LABELS[self.state]

    def line(self) -> str:
        return f"{self.label}: {self.kind} {self.name}: {self.message}"


def thresholds(dataset: Dataset) -> tuple[int, int] | None:
    """(warn, crit) minutes for the newest snapshot's age, or None when not monitored."""
    policy = dataset.policy
    if policy is None or not (policy.autosnap or policy.monitor_only):
        return None
    if policy.warn_minutes and policy.crit_minutes:
        return policy.warn_minutes, policy.crit_minutes
    for period, (warn, crit) in DEFAULT_THRESHOLDS.items():
        if getattr(policy, period):
            if period == "frequently":
                warn, crit = 2 * policy.frequent_period, 4 * policy.frequent_period
            return policy.warn_minutes or warn, policy.crit_minutes or crit
    return None


def age_text(seconds: float) -> str:
    if seconds <= 90 * 60:
        return f"{seconds / 60:.0f}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def dataset_checks(now: dt.datetime | None = None) -> list[Check]:
    """One check per dataset with a snapshot policy: how old its newest snapshot is."""
    now = now or timezone.now()
    checks = []
    for dataset in Dataset.objects.filter(policy__isnull=False).select_related("host", "policy"):
        limits = thresholds(dataset)
        if limits is None:
            continue
        warn, crit = limits
        name = str(dataset)
        if dataset.newest_snapshot_at is None:
            state = CRIT if dataset.listed_at else WARN
            what = "no snapshot" if dataset.listed_at else "not listed yet"
            checks.append(Check("dataset", name, state, what))
            continue
        age = (now - dataset.newest_snapshot_at).total_seconds()
        state = CRIT if age > crit * 60 else WARN if age > warn * 60 else OK
        checks.append(
            Check(
                "dataset",
                name,
                state,
                f"newest snapshot {dataset.newest_snapshot} is {age_text(age)} old "
                f"(warn {age_text(warn * 60)}, crit {age_text(crit * 60)})",
                age_seconds=age,
            )
        )
    return checks


def job_rows(now: dt.datetime | None = None) -> list[dict]:
    """Every job with its latest run, failures since its last success, open divergence,
    lag behind the source's newest snapshot, and its state."""
    now = now or timezone.now()
    latest = ReplicationRun.objects.filter(job=OuterRef("pk")).order_by("-id")
    jobs = (
        ReplicationJob.objects.select_related("source__host", "target__host")
        .annotate(
            last_state=Subquery(latest.values("state")[:1]),
            last_error=Subquery(latest.values("error")[:1]),
            last_bytes=Subquery(latest.values("bytes")[:1]),
            last_plan=Subquery(latest.values("plan_kind")[:1]),
            last_run_id=Subquery(latest.values("pk")[:1]),
            last_touched=Subquery(latest.values("updated_at")[:1]),
            open_divergence=Subquery(
                DivergenceReport.objects.filter(
                    job=OuterRef("pk"), status=DivergenceReport.Status.OPEN
                ).values("pk")[:1]
            ),
        )
        .prefetch_related("datasets")
        .order_by("name")
    )
    failures = _failures()
    rows = []
    for job in jobs:
        lag = None
        if job.source.newest_snapshot_at and job.last_snapshot_at:
            lag = max(0.0, (job.source.newest_snapshot_at - job.last_snapshot_at).total_seconds())
        children = dataset_rows(job)
        lags = [c["lag_seconds"] for c in children if c["lag_seconds"] is not None]
        if lags:
            lag = max(lags + ([lag] if lag is not None else []))
        worst_child = max(children, key=lambda c: c["state"], default=None)
        since = (now - job.last_success_at).total_seconds() if job.last_success_at else None
        every = job.every_minutes * 60
        interrupted = (
            job.last_state == RunState.RUNNING
            and job.last_touched is not None
            and (now - job.last_touched).total_seconds() > settings.ZFS_RUN_STALE_SECONDS
        )
        if job.refusal:
            state, message = CRIT, f"refused: {job.refusal.splitlines()[0]}"
        elif interrupted:
            state = WARN
            message = (
                f"run {job.last_run_id} was interrupted: its worker stopped "
                f"{age_text((now - job.last_touched).total_seconds())} ago (killed or lost)"
            )
        elif job.open_divergence:
            state, message = CRIT, f"diverged, report {job.open_divergence} awaits approval"
            if worst_child is not None and worst_child["state"] == CRIT:
                message += f" ({worst_child['dataset']}: {worst_child['message']})"
        elif worst_child is not None and worst_child["state"] > OK:
            state = worst_child["state"]
            message = f"dataset {worst_child['dataset']}: {worst_child['message']}"
        elif since is None:
            state = WARN if job.last_state == RunState.FAILED else OK
            message = "never succeeded" + (f": {job.last_error}" if job.last_error else " yet")
        elif since > 4 * every + 600:
            state, message = (
                CRIT,
                f"last success {age_text(since)} ago (every {job.every_minutes}m)",
            )
        elif since > 2 * every + 300 or job.last_state == RunState.FAILED:
            state = WARN
            message = f"last success {age_text(since)} ago" + (
                f"; last run failed: {job.last_error}" if job.last_state == RunState.FAILED else ""
            )
        else:
            state, message = OK, f"last success {age_text(since)} ago"
        if lag is not None:
            message += f", lag {age_text(lag)}"
        rows.append(
            {
                "job": job,
                "state": state,
                "label": LABELS[state],
                "message": message,
                "lag_seconds": lag,
                "since_success_seconds": since,
                "failures": failures.get(job.pk, 0),
                "last_bytes": job.last_bytes or 0,
                "datasets": children,
            }
        )
    return rows


def dataset_rows(job: ReplicationJob) -> list[dict]:
    """Each dataset of a job (its own and, recursive, every child) with its state: a
    failing child makes the job WARN, a diverged or stopped one CRIT."""
    rows = []
    S = ReplicatedDataset.State
    for ds in job.datasets.all():
        if ds.state == S.OK:
            state, message = OK, f"in sync at {ds.last_snapshot}"
        elif ds.state == S.PENDING:
            state, message = OK, "not run yet"
        elif ds.state == S.FAILED:
            state, message = WARN, "last run failed: " + (ds.message.splitlines() or [""])[-1]
        else:
            state, message = CRIT, f"{ds.get_state_display().lower()}: {ds.message}"
        lag = ds.lag_seconds
        if lag is not None and ds.state != S.OK:
            message += f", lag {age_text(lag)}"
        rows.append(
            {
                "dataset": ds.source_dataset,
                "target": ds.target_dataset,
                "state": state,
                "label": LABELS[state],
                "message": message,
                "lag_seconds": lag,
                "last_bytes": ds.last_bytes,
                "total_bytes": ds.total_bytes,
            }
        )
    return rows


def _failures() -> dict[int, int]:
    """Failed runs since each job's last success (all of them when it never succeeded)."""
    since = Q(job__last_success_at__isnull=True) | Q(finished_at__gt=F("job__last_success_at"))
    rows = (
        ReplicationRun.objects.filter(since, state=RunState.FAILED)
        .values("job_id")
        .annotate(n=Count("id"))
        .values_list("job_id", "n")
    )
    return dict(rows)


def job_checks(now: dt.datetime | None = None) -> list[Check]:
    return [
        Check(
            "job",
            row["job"].name,
            row["state"],
            row["message"],
            lag_seconds=row["lag_seconds"],
            age_seconds=row["since_success_seconds"],
        )
        for row in job_rows(now)
    ]


def all_checks(now: dt.datetime | None = None) -> list[Check]:
    return dataset_checks(now) + job_checks(now)


def worst(checks: list[Check]) -> int:
    return max((c.state for c in checks), default=OK)
