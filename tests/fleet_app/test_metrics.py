"""/metrics: Prometheus exposition of the fleet, computed at scrape time."""

from django.utils import timezone

from fleet_app.models import System
from tests.factories import make_system


def test_it_exposes_systems_by_status(client, customer):
    make_system(customer, name="a")
    alive = make_system(customer, name="b")
    System.objects.filter(pk=alive.pk).update(last_heartbeat_at=timezone.now())

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    assert 'cutover_systems{status="active"} 1.0' in body
    assert 'cutover_systems{status="unknown"} 1.0' in body
    assert "cutover_systems_never_inventoried 2.0" in body


def test_a_configured_token_is_required(client, db, settings):
    settings.METRICS_TOKEN = "scrape-me"

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200


def test_the_fleet_gauges_cost_one_query(customer, django_assert_num_queries):
    from fleet_app.metrics import fleet_metrics

    make_system(customer, name="a")
    # 1. the status counts, one aggregate over the systems
    with django_assert_num_queries(1):
        assert len(list(fleet_metrics())) == 3
