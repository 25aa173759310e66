"""Prometheus metrics for ZFS, from the same checks as ``zfs_check`` and the dashboard."""

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from fleet_app.metrics import register_collector

from . import selectors
from .models import DivergenceReport


def zfs_metrics() -> Iterable[Metric]:
    state = GaugeMetricFamily(
        "cutover_zfs_job_state", "Replication job state: 0 OK, 1 WARN, 2 CRIT.", labels=["job"]
    )
    success = GaugeMetricFamily(
        "cutover_zfs_job_last_success_timestamp_seconds",
        "When the job last brought its target up to date.",
        labels=["job"],
    )
    lag = GaugeMetricFamily(
        "cutover_zfs_job_lag_seconds",
        "Source's newest snapshot time minus the newest one the target has.",
        labels=["job"],
    )
    moved = GaugeMetricFamily(
        "cutover_zfs_job_last_run_bytes", "Bytes the job's latest run sent.", labels=["job"]
    )
    failures = GaugeMetricFamily(
        "cutover_zfs_job_failures", "Failed runs since the last success.", labels=["job"]
    )
    for row in selectors.job_rows():
        name = row["job"].name
        state.add_metric([name], row["state"])
        if row["job"].last_success_at:
            success.add_metric([name], row["job"].last_success_at.timestamp())
        if row["lag_seconds"] is not None:
            lag.add_metric([name], row["lag_seconds"])
        moved.add_metric([name], row["last_bytes"])
        failures.add_metric([name], row["failures"])
    yield from (state, success, lag, moved, failures)
    fresh = GaugeMetricFamily(
        "cutover_zfs_dataset_state",
        "Snapshot freshness: 0 OK, 1 WARN, 2 CRIT.",
        labels=["dataset"],
    )
    age = GaugeMetricFamily(
        "cutover_zfs_dataset_snapshot_age_seconds",
        "Age of the newest snapshot.",
        labels=["dataset"],
    )
    for check in selectors.dataset_checks():
        fresh.add_metric([check.name], check.state)
        if check.age_seconds is not None:
            age.add_metric([check.name], check.age_seconds)
    yield from (fresh, age)
    yield GaugeMetricFamily(
        "cutover_zfs_divergences_open",
        "Divergence reports awaiting a staff decision.",
        value=DivergenceReport.objects.filter(status=DivergenceReport.Status.OPEN).count(),
    )


register_collector(zfs_metrics)
