"""The ingest path writes to the database directly: a dead broker loses nothing."""

import json

import pytest

from fleet_app import services
from fleet_app.models import Inventory, System


@pytest.fixture
def dead_broker(settings):
    """Point Celery at a port where nothing listens, with queueing (not eager) enabled."""
    from controlplane.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = False
    previous = (app.conf.broker_url, app.conf.task_always_eager)
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    app.conf.task_always_eager = False
    yield app
    app.conf.broker_url, app.conf.task_always_eager = previous


def test_the_broker_is_really_dead(dead_broker):
    with (
        pytest.raises(Exception),  # noqa: B017 - any connection error will do
        dead_broker.connection_for_write() as conn,
    ):
        conn.ensure_connection(max_retries=1)


def test_heartbeats_and_inventories_are_stored_with_the_broker_down(
    client, system, auth_header, inventory_payload, dead_broker
):
    heartbeat = client.post("/collect/api/systems/heartbeat", **auth_header)
    inventory = client.post(
        "/collect/api/systems/inventory",
        data=json.dumps(inventory_payload),
        content_type="application/json",
        **auth_header,
    )

    assert heartbeat.status_code == 200
    assert inventory.status_code == 202
    services.inventory_inbox_drain()
    assert System.objects.get(pk=system.pk).last_heartbeat_at is not None
    assert Inventory.objects.filter(system=system).count() == 1
