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
    child_state = GaugeMetricFamily(
        "cutover_zfs_dataset_replication_state",
        "Each dataset of a job (a recursive job's children too): 0 OK, 1 WARN, 2 CRIT.",
        labels=["job", "dataset"],
    )
    child_lag = GaugeMetricFamily(
        "cutover_zfs_dataset_replication_lag_seconds",
        "Source's newest snapshot time minus the newest one the dataset's target has.",
        labels=["job", "dataset"],
    )
    child_bytes = GaugeMetricFamily(
        "cutover_zfs_dataset_replication_last_bytes",
        "Bytes the dataset received in its latest run.",
        labels=["job", "dataset"],
    )
    for row in selectors.job_rows():
        name = row["job"].name
        for child in row["datasets"]:
            child_state.add_metric([name, child["dataset"]], child["state"])
            if child["lag_seconds"] is not None:
                child_lag.add_metric([name, child["dataset"]], child["lag_seconds"])
            child_bytes.add_metric([name, child["dataset"]], child["last_bytes"])
        state.add_metric([name], row["state"])
        if row["job"].last_success_at:
            success.add_metric([name], row["job"].last_success_at.timestamp())
        if row["lag_seconds"] is not None:
            lag.add_metric([name], row["lag_seconds"])
        moved.add_metric([name], row["last_bytes"])
        failures.add_metric([name], row["failures"])
    yield from (state, success, lag, moved, failures, child_state, child_lag, child_bytes)
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
