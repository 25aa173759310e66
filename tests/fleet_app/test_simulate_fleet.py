"""manage.py simulate_fleet drives simulated systems through the real HTTP collect API."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from fleet_app import services
from fleet_app.models import Inventory, Organization, System, SystemActivityDay


def test_it_registers_systems_and_sends_heartbeats_and_inventories(live_server):
    out = io.StringIO()

    call_command(
        "simulate_fleet",
        systems=3,
        rounds=2,
        interval=0,
        # The in-memory SQLite test database is one connection shared by the live
        # server's threads: concurrent requests would interleave their transactions.
        concurrency=3 if connection.vendor == "postgresql" else 1,
        inventory_modules=5,
        url=live_server.url,
        stdout=out,
    )

    services.inventory_inbox_drain()
    customer = Organization.objects.get(name="sim-fleet", kind=Organization.Kind.CUSTOMER)
    assert customer.parent.kind == Organization.Kind.OWNER
    systems = list(System.objects.all())
    assert len(systems) == 3
    for system in systems:
        assert system.organization_id == customer.pk
        assert system.registered_at is not None
        assert system.last_heartbeat_at is not None
        assert system.last_inventory_at is not None
        assert Inventory.objects.filter(system=system).count() == 2
        # The leader node's facts were copied from the inventory the simulator sent
        # (its ui_name beside the name staff gave, which stays).
        assert system.fqdn.startswith("node1.")
        assert system.ui_name.startswith("Cluster ")
        assert system.name.startswith("sim-")
    assert SystemActivityDay.objects.filter(system__in=systems).count() == 3

    output = out.getvalue()
    # register 3, then 2 rounds of (heartbeat + inventory) for 3 systems.
    assert "summary: 15 requests" in output
    assert "no errors" in output
    # Secrets look like my_<public>.<secret>; none may reach the output.
    assert "my_" not in output


def test_it_reuses_its_organization_on_a_second_run(live_server):
    for _ in range(2):
        call_command(
            "simulate_fleet",
            systems=1,
            rounds=1,
            interval=0,
            inventory_modules=1,
            url=live_server.url,
            stdout=io.StringIO(),
        )

    assert Organization.objects.filter(name="sim-fleet", kind="customer").count() == 1
    assert Organization.objects.filter(name="sim-owner", kind="owner").count() == 1
    assert System.objects.filter(registered_at__isnull=False).count() == 2


def test_it_refuses_an_unreachable_url_before_creating_anything(db):
    with pytest.raises(CommandError, match="Cannot reach http://127.0.0.1:1/healthz"):
        call_command(
            "simulate_fleet",
            systems=2,
            rounds=1,
            interval=0,
            url="http://127.0.0.1:1",
            stdout=io.StringIO(),
        )

    assert not System.objects.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"systems": 0}, "--systems must be at least 1"),
        ({"systems": 1, "concurrency": 0}, "--concurrency must be at least 1"),
        ({"systems": 1, "interval": -1}, "--interval must be 0 or more"),
        ({"systems": 1, "url": "127.0.0.1:8000"}, "--url must start with http"),
    ],
)
def test_it_rejects_bad_arguments(db, options, message):
    with pytest.raises(CommandError, match=message):
        call_command("simulate_fleet", stdout=io.StringIO(), **options)
