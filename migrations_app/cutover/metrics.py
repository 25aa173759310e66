"""The cutover's Prometheus gauges, read from the same counters as the dashboard.

Three queries per scrape at any fleet size (``selectors.cutover_summary`` and the
``/proxy/credentials`` calls by outcome). Registered with
``fleet_app.metrics`` when this module is imported, which ``migrations_app.urls`` does.
"""

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fleet_app.metrics import register_collector

from . import selectors


def cutover_metrics() -> Iterable[Metric]:
    summary = selectors.cutover_summary()
    yield GaugeMetricFamily(
        "cutover_mappings_total",
        "Legacy mappings (rows of proxy_mappings).",
        value=summary.mappings,
    )
    states = GaugeMetricFamily(
        "cutover_mappings",
        "Mappings that reached each step (a fingerprinted mapping is also counted as rotated "
        "and confirmed); legacy: not rotated yet; released: legacy slot freed.",
        labels=["state"],
    )
    for state, value in (
        ("legacy", summary.legacy),
        ("rotated", summary.rotated),
        ("confirmed", summary.confirmed),
        ("fingerprinted", summary.fingerprinted),
        ("released", summary.released),
    ):
        states.add_metric([state], value)
    yield states
    yield GaugeMetricFamily(
        "cutover_decommission_ready",
        "1 when every mapping is fingerprinted: the legacy service and the proxy can go.",
        value=int(summary.decommission_ready),
    )
    yield GaugeMetricFamily(
        "cutover_fingerprint_anomalies_open",
        "Inventories whose facts.migration does not fit a mapping, not yet resolved.",
        value=summary.anomalies_open,
    )
    attempts = CounterMetricFamily(
        "cutover_proxy_attempts",
        "Calls to /proxy/credentials by outcome (the HTTP status: 200 issued, 401 unknown "
        "pair, 403 released or suspended, 409 already cut over, 429 throttled, 400 malformed).",
        labels=["outcome"],
    )
    counts = selectors.attempts_by_outcome()
    for outcome in sorted(set(counts) | {"200", "401", "403", "409", "429"}):
        attempts.add_metric([outcome], counts.get(outcome, 0))
    yield attempts
    projected = summary.projected_completion_at
    if projected is not None:
        yield GaugeMetricFamily(
            "cutover_projected_completion_timestamp_seconds",
            f"When the last mapping is fingerprinted at the rate of the last "
            f"{selectors.PROJECTION_WINDOW_DAYS} days (absent when there is no progress).",
            value=projected.timestamp(),
        )


register_collector(cutover_metrics)
