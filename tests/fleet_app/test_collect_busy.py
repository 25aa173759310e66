"""The collect API under saturation answers 503 with a jittered Retry-After, in its own
envelope, and writes nothing: a request that queued too long behind a wave, and any
collect request while the database refuses connections."""

import json
import socket
import time

import pytest
from django.db import connection

from fleet_app.api.busy import queued_ms
from fleet_app.models import InventoryInbox, System
from tests.conftest import basic_auth, needs_postgresql
from tests.factories import make_system

HEARTBEAT = "/collect/api/systems/heartbeat"
INVENTORY = "/collect/api/systems/inventory"
REGISTER = "/backend/api/systems/register"


def _stamp(seconds_ago: float) -> str:
    return f"t={int((time.time() - seconds_ago) * 1000)}"


def _assert_busy(response, settings) -> None:
    assert response.status_code == 503
    seconds = int(response["Retry-After"])
    base = settings.COLLECT_RETRY_AFTER_SECONDS
    assert base <= seconds <= 2 * base
    body = response.json()
    assert body["code"] == 503 and body["data"] is None
    assert body["message"].endswith(f"Retry in {seconds} seconds.")


@pytest.mark.django_db
def test_a_heartbeat_that_queued_past_the_limit_is_refused_before_any_work(client, settings):
    settings.COLLECT_QUEUE_LIMIT_MS = 2000
    system = make_system(name="queued")
    auth = basic_auth(system.system_key, system.issued_secret)
    before = System.objects.get(pk=system.pk).last_heartbeat_at

    late = client.post(
        HEARTBEAT, HTTP_AUTHORIZATION=auth, HTTP_X_REQUEST_START=_stamp(seconds_ago=3)
    )
    _assert_busy(late, settings)
    assert late.json()["message"].startswith("The service is busy.")
    assert System.objects.get(pk=system.pk).last_heartbeat_at == before

    on_time = client.post(
        HEARTBEAT, HTTP_AUTHORIZATION=auth, HTTP_X_REQUEST_START=_stamp(seconds_ago=0.5)
    )
    assert on_time.status_code == 200
    assert System.objects.get(pk=system.pk).last_heartbeat_at != before


@pytest.mark.django_db
def test_without_a_proxy_stamp_or_with_shedding_off_nothing_is_shed(client, settings):
    system = make_system(name="unstamped")
    auth = basic_auth(system.system_key, system.issued_secret)
    assert client.post(HEARTBEAT, HTTP_AUTHORIZATION=auth).status_code == 200
    settings.COLLECT_QUEUE_LIMIT_MS = 0
    old = client.post(HEARTBEAT, HTTP_AUTHORIZATION=auth, HTTP_X_REQUEST_START=_stamp(60))
    assert old.status_code == 200
    # Only the system-facing routes are shed: a staff page stamped late is served.
    settings.COLLECT_QUEUE_LIMIT_MS = 1000
    assert client.get("/healthz", HTTP_X_REQUEST_START=_stamp(60)).status_code == 200


def test_the_stamp_is_read_in_the_unit_its_magnitude_says():
    class Request:
        def __init__(self, value):
            self.META = {"HTTP_X_REQUEST_START": value}

    now = 1_800_000_000.0
    assert queued_ms(Request("t=1799999998000"), now) == pytest.approx(2000)
    assert queued_ms(Request("1799999998500000"), now) == pytest.approx(1500)  # µs
    assert queued_ms(Request("t=1799999999"), now) == pytest.approx(1000)  # s
    assert queued_ms(Request("t=soon"), now) is None
    assert queued_ms(Request(""), now) is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Outage:
    """The default connection pointed at a port where nothing listens (a real refusal)."""

    def __init__(self):
        self.saved = dict(connection.settings_dict)

    def start(self) -> None:
        connection.close()
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(_closed_port()))

    def end(self) -> None:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(self.saved)


@pytest.fixture
def outage(transactional_db):
    outage = Outage()
    yield outage
    outage.end()


@needs_postgresql
def test_every_collect_route_answers_503_while_the_database_refuses(
    client, settings, outage, inventory_payload
):
    system = make_system(name="outage")
    auth = basic_auth(system.system_key, system.issued_secret)
    before = System.objects.get(pk=system.pk).last_heartbeat_at
    inbox = InventoryInbox.objects.count()
    unregistered = make_system(name="not yet", registered=False)

    outage.start()
    heartbeat = client.post(HEARTBEAT, HTTP_AUTHORIZATION=auth)
    _assert_busy(heartbeat, settings)
    assert "cannot reach its database" in heartbeat.json()["message"]
    inventory = client.post(
        INVENTORY,
        data=json.dumps(inventory_payload),
        content_type="application/json",
        HTTP_AUTHORIZATION=auth,
    )
    _assert_busy(inventory, settings)
    register = client.post(
        REGISTER,
        data=json.dumps({"system_secret": unregistered.issued_secret}),
        content_type="application/json",
    )
    _assert_busy(register, settings)
    outage.end()

    # Nothing was written; once the database is back the same heartbeat is recorded.
    assert System.objects.get(pk=system.pk).last_heartbeat_at == before
    assert InventoryInbox.objects.count() == inbox
    assert System.objects.get(pk=unregistered.pk).registered_at is None
    assert client.post(HEARTBEAT, HTTP_AUTHORIZATION=auth).status_code == 200
    assert System.objects.get(pk=system.pk).last_heartbeat_at != before
