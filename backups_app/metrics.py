"""Prometheus metrics for backups: freshness of cluster backups and of restore drills."""

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from fleet_app.metrics import register_collector
from fleet_app.models import System

from .cluster_backups import selectors as cluster_selectors
from .service_backups import selectors as service_selectors


def backup_metrics() -> Iterable[Metric]:
    counts = cluster_selectors.backup_freshness_counts(System.objects.all())
    systems = GaugeMetricFamily(
        "cutover_cluster_backup_systems",
        "Live systems by the age of their latest configuration backup.",
        labels=["freshness"],
    )
    for freshness in ("fresh", "stale", "never"):
        systems.add_metric([freshness], counts[freshness])
    yield systems
    yield GaugeMetricFamily(
        "cutover_cluster_backup_bytes", "Bytes of stored cluster backups.", value=counts["bytes"]
    )
    yield GaugeMetricFamily(
        "cutover_cluster_backup_corrupt",
        "Stored cluster backups whose checksum no longer matches.",
        value=counts["corrupt"],
    )
    overdue = GaugeMetricFamily(
        "cutover_service_drill_overdue",
        "1 when a service has no good restore drill within the threshold.",
        labels=["service"],
    )
    for row in service_selectors.services_overview():
        overdue.add_metric([row["service"].name], int(bool(row["drill_overdue"])))
    yield overdue


register_collector(backup_metrics)
