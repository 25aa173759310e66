"""Prometheus metrics at /metrics, computed from the database at scrape time.

Each app contributes a collector (``register_collector``); values are read fresh on every
scrape, so they are the same numbers the dashboards show and need no process-local state
(gunicorn runs several workers).

The gauges describe the whole fleet, so scraping needs ``Authorization: Bearer
<METRICS_TOKEN>``. With no token configured the endpoint answers 403 saying so, unless
``METRICS_PUBLIC`` deliberately opens it (the demo, a scraper on a private network).
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


def inbox_metrics() -> Iterable[Metric]:
    inbox = selectors.inventory_inbox_status()
    yield GaugeMetricFamily(
        "cutover_inventory_inbox_depth",
        "Inventories accepted and waiting to be recorded.",
        value=inbox["depth"],
    )
    yield GaugeMetricFamily(
        "cutover_inventory_inbox_oldest_age_seconds",
        "Age of the oldest inventory waiting to be recorded (0 when none waits).",
        value=inbox["age_seconds"],
    )
    yield GaugeMetricFamily(
        "cutover_inventory_inbox_failed",
        "Inventories kept in the inbox because they failed while being recorded.",
        value=inbox["failed"],
    )


register_collector(fleet_metrics)
register_collector(inbox_metrics)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """The answer to a scrape that may not read the metrics, or None if it may."""
    token = settings.METRICS_TOKEN
    if not token:
        if settings.METRICS_PUBLIC:
            return None
        return HttpResponse(
            "Metrics are closed: set METRICS_TOKEN and scrape with "
            '"Authorization: Bearer <METRICS_TOKEN>", or set METRICS_PUBLIC=true to open '
            "them to anyone who can reach this address.\n",
            status=403,
            content_type="text/plain",
        )
    scheme, _, presented = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    # Constant time: how long the comparison takes says nothing about the token.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), token.encode()
    ):
        response = HttpResponse(
            "A bearer token is required.\n", status=401, content_type="text/plain"
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return None


def metrics_view(request: HttpRequest) -> HttpResponse:
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Registered())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
