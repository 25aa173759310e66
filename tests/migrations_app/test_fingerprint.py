"""facts.migration in inventories: mappings fingerprinted, anomalies recorded."""

import json

import pytest

from fleet_app import services
from fleet_app.demo import ns8_inventory
from migrations_app.models import CutoverDay, FingerprintAnomaly, LegacyMapping
from tests.conftest import basic_auth
from tests.factories import make_mapping, make_system

URL = "/collect/api/systems/inventory"


@pytest.fixture(autouse=True)
def fresh_throttle():
    from django.core.cache import cache

    cache.clear()


def rotated(client, mapping):
    data = client.get(
        "/proxy/credentials",
        HTTP_AUTHORIZATION=basic_auth(mapping.legacy_system_id, mapping.legacy_token),
    ).json()["data"]
    return {"HTTP_AUTHORIZATION": basic_auth(data["system_key"], data["system_secret"])}


def send(client, header, from_id, migrated_at="2026-11-20T10:00:00Z"):
    payload = ns8_inventory(
        seed=3, modules=3, from_legacy_system_id=from_id, migrated_at=migrated_at
    )
    response = client.post(URL, json.dumps(payload), content_type="application/json", **header)
    services.inventory_inbox_drain()
    return response


def test_an_inventory_naming_its_legacy_id_fingerprints_the_mapping(client, customer):
    mapping = make_mapping(customer)
    header = rotated(client, mapping)

    assert send(client, header, mapping.legacy_system_id).status_code == 202
    send(client, header, mapping.legacy_system_id)

    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.fingerprint_at is not None
    assert row.migrated_at.isoformat() == "2026-11-20T10:00:00+00:00"
    assert row.confirmed_at is not None  # the inventory was its first native call
    assert CutoverDay.objects.get().fingerprinted == 1
    assert not FingerprintAnomaly.objects.exists()


def test_a_native_cluster_reports_null_and_nothing_happens(client, system, auth_header):
    send(client, auth_header, None, migrated_at=None)

    assert not FingerprintAnomaly.objects.exists()


def test_an_unknown_legacy_id_is_an_anomaly(client, system, auth_header):
    send(client, auth_header, "ghost-42")
    send(client, auth_header, "ghost-42")

    anomaly = FingerprintAnomaly.objects.get()
    assert anomaly.kind == "unknown"
    assert anomaly.claimed_legacy_system_id == "ghost-42"
    assert anomaly.occurrences == 2


def test_the_legacy_id_of_another_system_is_a_mismatch(client, customer):
    mine = make_mapping(customer, legacy_system_id="mine", legacy_token="t1")
    make_mapping(customer, legacy_system_id="theirs", legacy_token="t2")
    header = rotated(client, mine)

    send(client, header, "theirs")

    anomaly = FingerprintAnomaly.objects.get()
    assert anomaly.kind == "mismatch"
    assert anomaly.expected_legacy_system_id == "mine"
    assert LegacyMapping.objects.get(legacy_system_id="theirs").fingerprint_at is None
    assert LegacyMapping.objects.get(legacy_system_id="mine").fingerprint_at is None


def test_a_garbled_migrated_at_still_fingerprints(client, customer):
    mapping = make_mapping(customer)
    header = rotated(client, mapping)

    send(client, header, mapping.legacy_system_id, migrated_at="2026-13-45T99:00:00")

    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.fingerprint_at is not None and row.migrated_at is None


def test_fingerprints_cost_no_query_on_native_inventories(
    client, customer, django_assert_num_queries
):
    system = make_system(customer)
    header = {"HTTP_AUTHORIZATION": basic_auth(system.system_key, system.issued_secret)}
    send(client, header, None, migrated_at=None)
    payload = ns8_inventory(seed=3, modules=3, from_legacy_system_id=None, migrated_at=None)
    payload["facts"]["nodes"]["1"]["uptime_seconds"] += 600
    client.post(URL, json.dumps(payload), content_type="application/json", **header)
    # A document changed only in counters: the drain's queries of test_inventory.py; the
    # fingerprint receiver adds nothing.
    with django_assert_num_queries(12):
        services.inventory_inbox_drain()
