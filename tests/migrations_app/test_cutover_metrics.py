"""/metrics: the cutover gauges, read from the same counters as the dashboard."""

import datetime as dt
import re

from django.utils import timezone

from migrations_app.models import CutoverDay, FingerprintAnomaly
from tests.factories import make_system


def scrape(client, headers: dict[str, str]) -> dict[str, float]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    values = {}
    for line in response.content.decode().splitlines():
        if line.startswith("cutover_") and not line.startswith("cutover_systems"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_it_exposes_the_counts_by_state(client, customer, metrics_auth):
    today = timezone.now().date()
    CutoverDay.objects.create(
        day=today - dt.timedelta(days=20), mappings=10, rotated=8, confirmed=6, fingerprinted=1
    )
    CutoverDay.objects.create(day=today, fingerprinted=3, released=2)
    FingerprintAnomaly.objects.create(
        system=make_system(customer), kind="unknown", claimed_legacy_system_id="ghost"
    )

    values = scrape(client, metrics_auth)

    assert values["cutover_mappings_total"] == 10
    assert values['cutover_mappings{state="legacy"}'] == 2
    assert values['cutover_mappings{state="rotated"}'] == 8
    assert values['cutover_mappings{state="confirmed"}'] == 6
    assert values['cutover_mappings{state="fingerprinted"}'] == 4
    assert values['cutover_mappings{state="released"}'] == 2
    assert values["cutover_decommission_ready"] == 0
    assert values["cutover_fingerprint_anomalies_open"] == 1
    # 6 remaining at 3/7 a day: 14 days from now.
    projected = values["cutover_projected_completion_timestamp_seconds"]
    expected = (timezone.now() + dt.timedelta(days=14)).timestamp()
    assert abs(projected - expected) < 60


def test_ready_is_one_and_the_projection_is_omitted_when_done(client, db, metrics_auth):
    CutoverDay.objects.create(day=timezone.now().date(), mappings=3, fingerprinted=3)

    values = scrape(client, metrics_auth)

    assert values["cutover_decommission_ready"] == 1
    assert "cutover_projected_completion_timestamp_seconds" not in values


def test_the_projection_is_omitted_without_recent_progress(client, db, metrics_auth):
    CutoverDay.objects.create(
        day=timezone.now().date() - dt.timedelta(days=8), mappings=3, fingerprinted=1
    )

    body = client.get("/metrics", headers=metrics_auth).content.decode()

    assert "cutover_projected_completion_timestamp_seconds" not in body
    assert re.search(r"^cutover_decommission_ready 0\.0$", body, re.M)


def test_the_cutover_gauges_cost_the_same_queries_at_any_size(db, django_assert_num_queries):
    from migrations_app.cutover.metrics import cutover_metrics

    CutoverDay.objects.create(day=timezone.now().date(), mappings=1_000_000, fingerprinted=10)
    # 1. every CutoverDay row (a few hundred at most)  2. COUNT open anomalies
    # 3. the /proxy/credentials calls by outcome (a few ProxyAttemptDay rows a day)
    # (each app's collector is pinned on its own: the scrape is their sum)
    with django_assert_num_queries(3):
        families = list(cutover_metrics())
    assert families
