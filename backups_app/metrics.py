"""Backup gauges for /metrics, read from the database at scrape time."""

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from fleet_app.metrics import register_collector
from fleet_app.models import System

from . import selectors


def backup_metrics() -> Iterable[Metric]:
    counts = selectors.backup_freshness_counts(System.objects.all())
    systems = GaugeMetricFamily(
        "cutover_backup_systems",
        "Live systems by the age of their latest cluster backup.",
        labels=["freshness"],
    )
    for key in ("fresh", "stale", "never"):
        systems.add_metric([key], counts[key])
    yield systems
    yield GaugeMetricFamily(
        "cutover_backup_stored_bytes", "Bytes of cluster backups stored.", value=counts["bytes"]
    )
    yield GaugeMetricFamily(
        "cutover_backup_corrupt", "Cluster backups that failed a checksum on read.",
        value=counts["corrupt"],
    )  # fmt: skip
    overdue = GaugeMetricFamily(
        "cutover_backup_drill_overdue",
        "1 when a service's latest good restore drill is older than the threshold.",
        labels=["service"],
    )
    for row in selectors.services_overview():
        overdue.add_metric([row["service"].name], int(row["drill_overdue"]))
    yield overdue


register_collector(backup_metrics)
