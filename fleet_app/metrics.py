"""Prometheus metrics at /metrics, computed from the database at scrape time.

Each app contributes a collector (``register_collector``); values are read fresh on every
scrape, so they are the same numbers the dashboards show and need no process-local state
(gunicorn runs several workers). Set ``METRICS_TOKEN`` to require
``Authorization: Bearer <token>``.
"""

import hmac
from collections.abc import Callable, Iterable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from . import selectors
from .models import System

_collectors: list[Callable[[], Iterable[Metric]]] = []


def register_collector(collect: Callable[[], Iterable[Metric]]) -> None:
    """Add a function yielding metric families; called once per scrape."""
    if collect not in _collectors:
        _collectors.append(collect)


class _Registered:
    def collect(self) -> Iterable[Metric]:
        for collect in _collectors:
            yield from collect()


def fleet_metrics() -> Iterable[Metric]:
    counts = selectors.fleet_status_counts(System.objects.all())
    systems = GaugeMetricFamily(
        "cutover_systems", "Systems by heartbeat status (deleted excluded).", labels=["status"]
    )
    for status in ("active", "inactive", "unknown"):
        systems.add_metric([status], counts[status])
    yield systems
    yield GaugeMetricFamily(
        "cutover_systems_never_inventoried",
        "Systems that never sent an inventory.",
        value=counts["never_inventoried"],
    )
    yield GaugeMetricFamily(
        "cutover_systems_unregistered",
        "Systems created but not registered.",
        value=counts["unregistered"],
    )


register_collector(fleet_metrics)


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if token:
        presented = request.META.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
        if not hmac.compare_digest(presented.encode(), token.encode()):
            return HttpResponse(
                "A bearer token is required.\n", status=401, content_type="text/plain"
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Registered())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
