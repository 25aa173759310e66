"""/metrics: Prometheus exposition of the fleet, computed at scrape time, for the scraper
holding METRICS_TOKEN (or anyone, once METRICS_PUBLIC opens it)."""

import datetime as dt

from django.utils import timezone

from fleet_app import metrics
from fleet_app.models import InventoryInbox, System
from tests.factories import make_system


def test_it_exposes_systems_by_status(client, customer, metrics_auth):
    make_system(customer, name="a")
    alive = make_system(customer, name="b")
    System.objects.filter(pk=alive.pk).update(last_heartbeat_at=timezone.now())

    response = client.get("/metrics", headers=metrics_auth)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    assert 'cutover_systems{status="active"} 1.0' in body
    assert 'cutover_systems{status="unknown"} 1.0' in body
    assert "cutover_systems_never_inventoried 2.0" in body


def test_it_is_closed_without_a_token(client, db, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = False

    response = client.get("/metrics")

    assert response.status_code == 403
    body = response.content.decode()
    assert "set METRICS_TOKEN" in body and "METRICS_PUBLIC=true" in body
    assert "cutover_systems" not in body


def test_it_can_be_opened_explicitly(client, db, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = True

    response = client.get("/metrics")

    assert response.status_code == 200
    assert "cutover_systems" in response.content.decode()


def test_a_configured_token_is_required(client, db, settings):
    settings.METRICS_TOKEN = "scrape-me"

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic scrape-me").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="scrape-me").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200


def test_a_token_wins_over_public(client, db, settings):
    """METRICS_PUBLIC opens only a server with no token: a token always applies."""
    settings.METRICS_TOKEN = "scrape-me"
    settings.METRICS_PUBLIC = True

    assert client.get("/metrics").status_code == 401


def test_the_token_is_compared_in_constant_time(client, db, settings, monkeypatch):
    settings.METRICS_TOKEN = "scrape-me"
    compared = []
    real = metrics.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(metrics.hmac, "compare_digest", spy)

    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-mE").status_code == 401
    assert compared == [(b"scrape-mE", b"scrape-me")]


def test_the_fleet_gauges_cost_one_query(customer, django_assert_num_queries):
    make_system(customer, name="a")
    # 1. the status counts, one aggregate over the systems
    with django_assert_num_queries(1):
        assert len(list(metrics.fleet_metrics())) == 3


def test_the_inventory_inbox_gauges_show_depth_age_and_failures(
    client, system, metrics_auth, django_assert_num_queries
):
    old = timezone.now() - dt.timedelta(seconds=90)
    InventoryInbox.objects.create(
        system=system, body=b"{}", size=2, digest="a" * 64, received_at=old
    )
    InventoryInbox.objects.create(system=system, body=b"{}", size=2, digest="b" * 64)
    InventoryInbox.objects.create(
        system=system, body=b"[]", size=2, digest="c" * 64, failed_at=old, error="bad"
    )
    # 1. one aggregate over the inbox
    with django_assert_num_queries(1):
        families = {family.name: family for family in metrics.inbox_metrics()}

    assert families["cutover_inventory_inbox_depth"].samples[0].value == 2
    assert 90 <= families["cutover_inventory_inbox_oldest_age_seconds"].samples[0].value < 120
    assert families["cutover_inventory_inbox_failed"].samples[0].value == 1
    text = client.get("/metrics", headers=metrics_auth).content.decode()
    assert "cutover_inventory_inbox_depth 2.0" in text
