"""POST {collect_url}/inventory: stored as history, leader facts copied, changes recorded."""

import copy
import hashlib
import json

import pytest
from django.db import connection
from django.utils import timezone

from fleet_app import services
from fleet_app.models import Inventory, InventoryChange, InventoryInbox, System
from fleet_app.signals import inventory_received
from tests.conftest import basic_auth
from tests.factories import make_system

URL = "/collect/api/systems/inventory"


def send(client, auth_header, payload, *, drain=True, **extra):
    """Post an inventory and, by default, drain the inbox as a worker would."""
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    response = client.post(URL, data=body, content_type="application/json", **auth_header, **extra)
    if drain:
        services.inventory_inbox_drain()
    return response


def test_it_stores_the_inventory_and_copies_the_leader_facts(
    client, system, auth_header, inventory_payload
):
    response = send(client, auth_header, inventory_payload)

    assert response.status_code == 202
    body = response.json()
    assert body["code"] == 202
    stored = Inventory.objects.get(system=system)
    sent = json.dumps(inventory_payload).encode()
    assert body["data"]["digest"] == stored.body_digest == hashlib.sha256(sent).hexdigest()
    assert stored.data == inventory_payload
    assert stored.size == len(sent)
    assert not InventoryInbox.objects.exists()
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
    from fleet_app import hot

    send(client, auth_header, inventory_payload)  # the first call confirms the secret
    hot.forget_all()
    # A system new to this process: 1. SELECT system by system_key, 2. INSERT the inbox row.
    with django_assert_num_queries(2):
        send(client, auth_header, inventory_payload, drain=False)
    services.inventory_inbox_drain()
    changed = copy.deepcopy(inventory_payload)
    for node in changed["facts"]["nodes"].values():
        node["version"] = "9.9.9"
    # Remembered now: 1. INSERT the inbox row, guarded by the system's digest and state.
    expected = 1 if connection.vendor == "postgresql" else 2
    with django_assert_num_queries(expected):
        response = send(client, auth_header, changed, drain=False)
    assert response.status_code == 202
    # The drain, one batch (one transaction):
    # 1. BEGIN (a SAVEPOINT here)               8. INSERT inventory
    # 2. SELECT the batch FOR UPDATE SKIP LOCKED 9. SELECT the previous document (digests differ)
    # 3. SELECT earlier rows held elsewhere     10. INSERT changes (one bulk insert)
    # 4. SELECT the batch's systems             11. UPDATE system's copied fields
    # 5. SELECT the bodies                      12. RELEASE the row's savepoint
    # 6. SAVEPOINT (the row)                    13. DELETE the recorded rows
    # 7. SELECT the previous inventory's digests 14. COMMIT (a RELEASE here)
    with django_assert_num_queries(14):
        services.inventory_inbox_drain()
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


def test_a_failing_receiver_rolls_the_inventory_back_and_keeps_the_row_with_why(
    client, system, auth_header, inventory_payload
):
    def receiver(**kwargs):
        raise RuntimeError("receiver failed")

    inventory_received.connect(receiver)
    try:
        response = send(client, auth_header, inventory_payload)
    finally:
        inventory_received.disconnect(receiver)

    assert response.status_code == 202
    assert not Inventory.objects.exists()
    assert System.objects.get(pk=system.pk).last_inventory_at is None
    kept = InventoryInbox.objects.get()
    assert kept.failed_at is not None
    assert kept.error == "RuntimeError: receiver failed"


def test_a_failed_row_never_blocks_the_rows_behind_it(
    client, system, auth_header, inventory_payload
):
    calls = []

    def receiver(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("receiver failed")

    inventory_received.connect(receiver)
    try:
        send(client, auth_header, inventory_payload, drain=False)
        send(client, auth_header, {**inventory_payload, "uuid": "next"}, drain=False)
        drained = services.inventory_inbox_drain()
    finally:
        inventory_received.disconnect(receiver)

    assert (drained.processed, drained.failed) == (1, 1)
    assert Inventory.objects.get().data["uuid"] == "next"
    assert InventoryInbox.objects.get().error == "RuntimeError: receiver failed"
    # A failed row is not taken again.
    assert services.inventory_inbox_drain() == services.InboxDrained()


def test_an_identical_document_is_recorded_without_a_diff(
    client, system, auth_header, inventory_payload, django_assert_num_queries
):
    send(client, auth_header, inventory_payload)
    send(client, auth_header, inventory_payload, drain=False)
    # BEGIN, claim, held, systems, bodies, SAVEPOINT, previous digests, INSERT inventory,
    # UPDATE system, RELEASE, DELETE, COMMIT: nothing flattened, nothing compared.
    with django_assert_num_queries(12):
        services.inventory_inbox_drain()

    first, second = Inventory.objects.order_by("received_at")
    assert first.body_digest == second.body_digest
    assert first.facts_digest == second.facts_digest
    assert second.data == inventory_payload
    assert not InventoryChange.objects.exists()


def test_a_document_that_fails_its_checks_in_the_drain_is_kept_with_why(system):
    # Accepted under a looser limit than the drain now applies, say.
    InventoryInbox.objects.create(system=system, body=b"[1]", size=3, digest="x" * 64)

    drained = services.inventory_inbox_drain()

    assert drained.failed == 1
    assert InventoryInbox.objects.get().error == "The inventory must be a JSON object."


def _nothing_written(system):
    assert not InventoryInbox.objects.filter(system=system).exists()
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
    response = send(client, auth_header, ticked, drain=False)
    # BEGIN, claim, held, systems, bodies, SAVEPOINT, previous digests, INSERT inventory,
    # UPDATE system, RELEASE, DELETE, COMMIT: the previous document is never fetched.
    with django_assert_num_queries(12):
        services.inventory_inbox_drain()

    assert response.status_code == 202
    assert not InventoryChange.objects.exists()
    first, second = Inventory.objects.order_by("received_at")
    assert first.facts_digest == second.facts_digest != ""


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("suspended_at", "This system is suspended."),
        ("deleted_at", "This system has been deleted."),
    ],
)
def test_a_remembered_system_suspended_since_is_refused(
    client, system, auth_header, inventory_payload, field, message
):
    """The guarded INSERT of a remembered system inserts nothing once its state changed:
    the full path answers, and no inbox row is left."""
    assert send(client, auth_header, inventory_payload).status_code == 202
    System.objects.filter(pk=system.pk).update(**{field: timezone.now()})
    response = send(client, auth_header, inventory_payload, drain=False)
    assert response.status_code == 403
    assert response.json()["message"] == message
    assert not InventoryInbox.objects.exists()


def test_a_remembered_system_with_a_reissued_secret_is_refused(
    client, system, auth_header, inventory_payload
):
    assert send(client, auth_header, inventory_payload).status_code == 202
    System.objects.filter(pk=system.pk).update(secret_digest="0" * 64)
    response = send(client, auth_header, inventory_payload, drain=False)
    assert response.status_code == 401
    assert not InventoryInbox.objects.exists()
