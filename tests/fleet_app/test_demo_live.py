"""The demo fleet's simulator (fleet_app/demo_live.py): the systems alive when it starts
keep heartbeating and inventorying through the real services; nothing else moves."""

import datetime as dt

import pytest
from django.utils import timezone

from fleet_app import demo_live, services
from fleet_app.demo import ns8_inventory
from fleet_app.models import Inventory, System
from tests.factories import make_system

pytestmark = pytest.mark.django_db


def _ago(**delta):
    return timezone.now() - dt.timedelta(**delta)


@pytest.fixture
def fleet(customer):
    systems = {
        name: make_system(customer, name=name, **fields)
        for name, fields in {
            "due": {"last_heartbeat_at": _ago(minutes=12)},
            "fresh": {"last_heartbeat_at": _ago(minutes=1)},
            "silent": {"last_heartbeat_at": _ago(hours=3)},
            "never": {},
            "suspended-later": {"last_heartbeat_at": _ago(minutes=15)},
        }.items()
    }
    payload = ns8_inventory(seed=7, modules=2, from_legacy_system_id="legacy-7")
    payload["facts"]["cluster"]["ui_name"] = "due"  # the ingest copies it onto the name
    services.inventory_ingest(system=systems["due"], payload=payload, size=100)
    Inventory.objects.update(received_at=_ago(days=1, minutes=5))
    System.objects.filter(pk=systems["due"].pk).update(last_inventory_at=_ago(days=1, minutes=5))
    return systems


def test_it_keeps_the_live_systems_alive_and_leaves_the_rest(fleet):
    simulator = demo_live.DemoFleet()
    services.system_suspend(actor=None, system=fleet["suspended-later"])
    before = {s.name: s.last_heartbeat_at for s in System.objects.all()}

    heartbeats, inventories = simulator.tick()

    after = {s.name: s.last_heartbeat_at for s in System.objects.all()}
    assert (heartbeats, inventories) == (1, 1)
    assert after["due"] > _ago(minutes=1)
    for name in ("fresh", "silent", "never", "suspended-later"):
        assert after[name] == before[name], name
    # The daily inventory is the latest one again, a day later, through the ingest.
    latest = Inventory.objects.filter(system=fleet["due"]).order_by("-received_at")
    assert latest.count() == 2
    assert latest[0].received_at > _ago(minutes=1)
    assert latest[0].data["facts"]["migration"]["from_legacy_system_id"] == "legacy-7"
    node = next(iter(latest[0].data["facts"]["nodes"].values()))
    previous = next(iter(latest[1].data["facts"]["nodes"].values()))
    assert node["uptime_seconds"] == previous["uptime_seconds"] + 86400
    # Nothing is due again straight away.
    assert simulator.tick() == (0, 0)


def test_it_starts_only_under_runserver_with_the_setting_on(settings):
    serving = {"RUN_MAIN": "true"}
    settings.DEMO_LIVE = False
    assert not demo_live.should_start(["manage.py", "runserver"], serving)
    settings.DEMO_LIVE = True
    assert demo_live.should_start(["manage.py", "runserver"], serving)
    assert demo_live.should_start(["manage.py", "runserver", "--noreload"], {})
    # The autoreloader's parent process does not serve; nor does gunicorn or a command.
    assert not demo_live.should_start(["manage.py", "runserver"], {})
    assert not demo_live.should_start(["gunicorn", "controlplane.wsgi"], serving)
    assert not demo_live.should_start(["manage.py", "migrate"], serving)


def test_it_is_off_by_default():
    from django.conf import settings

    assert settings.DEMO_LIVE is False
