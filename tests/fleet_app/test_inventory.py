"""POST {collect_url}/inventory: stored as history, leader facts copied, changes recorded."""

import copy
import json

import pytest

from fleet_app.models import Inventory, InventoryChange, System
from fleet_app.signals import inventory_received
from tests.conftest import basic_auth
from tests.factories import make_system

URL = "/collect/api/systems/inventory"


def send(client, auth_header, payload, **extra):
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    return client.post(URL, data=body, content_type="application/json", **auth_header, **extra)


def test_it_stores_the_inventory_and_copies_the_leader_facts(
    client, system, auth_header, inventory_payload
):
    response = send(client, auth_header, inventory_payload)

    assert response.status_code == 202
    body = response.json()
    assert body["code"] == 202
    stored = Inventory.objects.get(system=system)
    assert body["data"]["inventory_id"] == stored.pk
    assert stored.data == inventory_payload
    assert stored.size == len(json.dumps(inventory_payload))
    system.refresh_from_db()
    leader = inventory_payload["facts"]["nodes"]["1"]
    assert system.type == "nethserver"
    assert system.fqdn == leader["fqdn"]
    assert system.version == leader["version"]
    assert system.ipv4_address == leader["default_ipv4"]
    # Staff's name is kept; the cluster's own is stored beside it.
    assert system.name == "cluster-a"
    assert system.ui_name == inventory_payload["facts"]["cluster"]["ui_name"]
    assert system.last_inventory_at == stored.received_at


def test_the_leader_is_found_by_flag_not_by_position(
    client, system, auth_header, inventory_payload
):
    nodes = inventory_payload["facts"]["nodes"]
    nodes["1"]["cluster_leader"] = False
    nodes["2"]["cluster_leader"] = True

    send(client, auth_header, inventory_payload)

    system.refresh_from_db()
    assert system.fqdn == nodes["2"]["fqdn"]


def test_the_first_inventory_records_no_changes(client, system, auth_header, inventory_payload):
    send(client, auth_header, inventory_payload)

    assert not InventoryChange.objects.exists()


def test_it_records_what_changed_and_ignores_counters(
    client, system, auth_header, inventory_payload
):
    send(client, auth_header, inventory_payload)
    changed = copy.deepcopy(inventory_payload)
    leader = changed["facts"]["nodes"]["1"]
    leader["version"] = "3.10.0"
    leader["uptime_seconds"] += 600
    leader["network_rx_bytes"] += 10**6
    leader["fqdn"] = "renamed.example.org"
    removed = changed["facts"]["modules"].pop(0)
    changed["facts"]["modules"].reverse()  # order alone is not a change

    send(client, auth_header, changed)

    changes = {c.path: c for c in InventoryChange.objects.filter(system=system)}
    assert set(changes) == {
        "facts.nodes.1.version",
        "facts.nodes.1.fqdn",
        f"facts.modules[{removed['id']}]",
    }
    assert (
        changes["facts.nodes.1.version"].old == inventory_payload["facts"]["nodes"]["1"]["version"]
    )
    assert changes["facts.nodes.1.version"].new == "3.10.0"
    assert changes["facts.nodes.1.version"].severity == "critical"
    assert changes["facts.nodes.1.fqdn"].severity == "warning"
    assert changes[f"facts.modules[{removed['id']}]"].new is None


def test_it_costs_a_fixed_number_of_queries(
    client, system, auth_header, inventory_payload, django_assert_num_queries
):
    send(client, auth_header, inventory_payload)
    changed = copy.deepcopy(inventory_payload)
    for node in changed["facts"]["nodes"].values():
        node["version"] = "9.9.9"
    # 1. SELECT system by system_key            5. SELECT the previous document (digests differ)
    # 2. SAVEPOINT (the ingest transaction)     6. INSERT changes (one bulk insert)
    # 3. SELECT the previous inventory's digest 7. UPDATE system's copied fields
    # 4. INSERT inventory                       8. RELEASE SAVEPOINT
    with django_assert_num_queries(8):
        response = send(client, auth_header, changed)
    assert response.status_code == 202
    assert InventoryChange.objects.count() == 3


def test_it_sends_the_inventory_received_signal(client, system, auth_header, inventory_payload):
    seen = []

    def receiver(sender, system, inventory, **kwargs):
        seen.append((system.pk, inventory.data["facts"]["migration"]))

    inventory_received.connect(receiver)
    try:
        inventory_payload["facts"]["migration"] = {
            "from_legacy_system_id": "legacy-1",
            "migrated_at": "2026-05-01T10:00:00Z",
        }
        send(client, auth_header, inventory_payload)
    finally:
        inventory_received.disconnect(receiver)

    assert seen == [
        (system.pk, {"from_legacy_system_id": "legacy-1", "migrated_at": "2026-05-01T10:00:00Z"})
    ]


def test_a_failing_receiver_rolls_the_inventory_back(
    client, system, auth_header, inventory_payload
):
    def receiver(**kwargs):
        raise RuntimeError("receiver failed")

    inventory_received.connect(receiver)
    try:
        with pytest.raises(RuntimeError):
            send(client, auth_header, inventory_payload)
    finally:
        inventory_received.disconnect(receiver)

    assert not Inventory.objects.exists()
    assert System.objects.get(pk=system.pk).last_inventory_at is None


def _nothing_written(system):
    assert not Inventory.objects.filter(system=system).exists()
    assert System.objects.get(pk=system.pk).last_inventory_at is None


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"uuid": "x"}', "'facts'"),
        (b'{"facts": {"migration": "yes"}}', "facts.migration"),
        (b'{"facts": {"nodes": 5}}', "facts.nodes"),
        (b"\xff\xfe", "not valid JSON"),
        # Each of these was a 500: PostgreSQL refuses NUL and unpaired surrogates in jsonb,
        # and the JSON reader and the change detection recurse.
        (b'{"facts": {"x": "a\\u0000b"}}', "NUL character"),
        (b'{"facts": {"\\u0000": 1}}', "NUL character"),
        (b'{"facts": {"x": "\\ud800"}}', "unpaired surrogate"),
        (b'{"facts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests too deeply"),
        (b'{"facts": ' + b'{"a":' * 5_000 + b"{}" + b"}" * 5_000 + b"}", "nests"),
        (b'{"facts": {"a": ' + b"[" * 200 + b"]" * 200 + b"}}", "deeper than 64 levels"),
    ],
)
def test_it_answers_400_and_writes_nothing_for_bad_bodies(
    client, system, auth_header, body, message
):
    response = send(client, auth_header, body)

    assert response.status_code == 400
    assert message in response.json()["message"]
    _nothing_written(system)


def test_it_answers_413_above_the_cap(client, system, auth_header, inventory_payload, settings):
    settings.COLLECT_INVENTORY_MAX_BYTES = 1000

    response = send(client, auth_header, inventory_payload)

    assert response.status_code == 413
    assert "1000-byte limit" in response.json()["message"]
    _nothing_written(system)


def test_the_cap_holds_when_content_length_lies(rf, system, auth_header, settings):
    from fleet_app.api.collect import inventory

    settings.COLLECT_INVENTORY_MAX_BYTES = 100
    request = rf.post(
        URL, data=b"{" + b" " * 500 + b"}", content_type="application/json", **auth_header
    )
    request.META["CONTENT_LENGTH"] = "10"  # the client understates its body

    response = inventory(request)

    assert response.status_code in (400, 413)
    _nothing_written(system)


def test_it_rejects_wrong_credentials(client, system, inventory_payload):
    response = send(
        client, {"HTTP_AUTHORIZATION": basic_auth(system.system_key, "my_a.b")}, inventory_payload
    )

    assert response.status_code == 401
    _nothing_written(system)


def test_it_refuses_an_unregistered_system(client, customer, inventory_payload):
    system = make_system(customer, registered=False)
    header = {"HTTP_AUTHORIZATION": basic_auth(system.system_key, system.issued_secret)}

    response = send(client, header, inventory_payload)

    assert response.status_code == 403
    _nothing_written(system)


def test_it_refuses_a_suspended_system(client, system, auth_header, inventory_payload):
    from django.utils import timezone

    System.objects.filter(pk=system.pk).update(suspended_at=timezone.now())

    response = send(client, auth_header, inventory_payload)

    assert response.status_code == 403
    _nothing_written(system)


def test_an_inventory_changed_only_in_counters_skips_the_diff(
    client, system, auth_header, inventory_payload, django_assert_num_queries
):
    send(client, auth_header, inventory_payload)
    ticked = copy.deepcopy(inventory_payload)
    for node in ticked["facts"]["nodes"].values():
        node["uptime_seconds"] += 600
        node["network_tx_bytes"] += 10**6
    # SELECT system, SAVEPOINT, SELECT previous digest, INSERT inventory, UPDATE system,
    # RELEASE: the previous document is never fetched.
    with django_assert_num_queries(6):
        response = send(client, auth_header, ticked)

    assert response.status_code == 202
    assert not InventoryChange.objects.exists()
    first, second = Inventory.objects.order_by("received_at")
    assert first.facts_digest == second.facts_digest != ""
