"""The cutover counters (CutoverDay) agree with a full recount after real traffic.

Everything goes through the real paths: the import command, /proxy/credentials, the
collect heartbeat and inventory (facts.migration), /api/Utils/freekey and the staff
re-open service; then ``cutover_counters_rebuild`` recounts from the mappings and must
find exactly the rows the traffic wrote.
"""

import json

import pytest
from django.core.management import call_command

from fleet_app import services as fleet_services
from fleet_app.demo import ns8_inventory
from migrations_app.cutover import selectors, services
from migrations_app.models import CutoverDay, FingerprintAnomaly, LegacyMapping
from tests.conftest import basic_auth
from tests.factories import make_system

HEARTBEAT = "/collect/api/systems/heartbeat"
INVENTORY = "/collect/api/systems/inventory"


@pytest.fixture(autouse=True)
def fresh_throttle():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def _import(tmp_path, organization, count):
    path = tmp_path / "export.csv"
    lines = ["legacy_system_id,legacy_token,name"]
    lines += [f"legacy-{i},token-{i},cluster {i}" for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    call_command(
        "import_legacy_mappings", str(path), "--apply", "--organization", organization.name
    )


def _rotate(client, i, token=None):
    response = client.get(
        "/proxy/credentials",
        HTTP_AUTHORIZATION=basic_auth(f"legacy-{i}", token or f"token-{i}"),
    )
    if response.status_code != 200:
        return response.status_code
    data = response.json()["data"]
    return {"HTTP_AUTHORIZATION": basic_auth(data["system_key"], data["system_secret"])}


def _heartbeat(client, header):
    assert client.post(HEARTBEAT, **header).status_code == 200


def _inventory(client, header, from_id):
    payload = ns8_inventory(
        seed=1, modules=2, from_legacy_system_id=from_id, migrated_at="2026-11-20T10:00:00Z"
    )
    response = client.post(
        INVENTORY, json.dumps(payload), content_type="application/json", **header
    )
    assert response.status_code == 202
    fleet_services.inventory_inbox_drain()


def _release(client, i):
    response = client.post("/api/Utils/freekey", {"lk": f"legacy-{i}", "secret": f"token-{i}"})
    assert response.status_code == 200


def _recount() -> dict[str, int]:
    mappings = LegacyMapping.objects
    return {
        "mappings": mappings.count(),
        "rotated": mappings.filter(rotated_at__isnull=False).count(),
        "confirmed": mappings.filter(confirmed_at__isnull=False).count(),
        "fingerprinted": mappings.filter(fingerprint_at__isnull=False).count(),
        "released": mappings.filter(released_at__isnull=False).count(),
        "legacy": mappings.filter(rotated_at__isnull=True).count(),
    }


def _counted() -> dict[str, int]:
    summary = selectors.cutover_summary()
    return {
        "mappings": summary.mappings,
        "rotated": summary.rotated,
        "confirmed": summary.confirmed,
        "fingerprinted": summary.fingerprinted,
        "released": summary.released,
        "legacy": summary.legacy,
    }


def _rows():
    return list(CutoverDay.objects.order_by("day").values())


def test_counters_match_a_full_recount_after_mixed_traffic(client, customer, tmp_path):
    _import(tmp_path, customer, 8)
    _import(tmp_path, customer, 8)  # the same file again: nothing new, nothing counted
    # 0: legacy, untouched; a wrong token changes nothing.
    assert _rotate(client, 0, token="wrong") == 401
    # 1: rotated, credentials never used.
    _rotate(client, 1)
    # 2: the response was lost, rotated again, then used.
    _rotate(client, 2)
    _heartbeat(client, _rotate(client, 2))
    # 3: rotated, first native call is an inventory naming its legacy id.
    _inventory(client, _rotate(client, 3), "legacy-3")
    # 4: fingerprinted, then the legacy slot is released (twice: idempotent).
    header = _rotate(client, 4)
    _inventory(client, header, "legacy-4")
    _inventory(client, header, "legacy-4")  # fingerprinted once
    _release(client, 4)
    _release(client, 4)
    # 5: released without ever rotating.
    _release(client, 5)
    # 6: confirmed, re-opened by staff (credentials lost), rotated and confirmed again.
    _heartbeat(client, _rotate(client, 6))
    services.mapping_reopen(
        actor=None, mapping=LegacyMapping.objects.get(legacy_system_id="legacy-6")
    )
    _heartbeat(client, _rotate(client, 6))
    # 7: rotated, its inventory claims another cluster's legacy id: an anomaly, no count.
    _inventory(client, _rotate(client, 7), "legacy-0")
    # A native cluster reports null, and a stranger claims an unknown id.
    native = make_system(customer, name="native")
    native_header = {"HTTP_AUTHORIZATION": basic_auth(native.system_key, native.issued_secret)}
    _inventory(client, native_header, None)
    _inventory(client, native_header, "ghost")

    written = _rows()
    services.cutover_counters_rebuild()

    assert _rows() == written
    assert (
        _counted()
        == _recount()
        == {
            "mappings": 8,
            "rotated": 6,
            "confirmed": 5,  # 2, 3, 4, 6, 7 (its inventory was a native call)
            "fingerprinted": 2,  # 3, 4
            "released": 2,  # 4, 5
            "legacy": 2,  # 0, 5
        }
    )
    assert FingerprintAnomaly.objects.filter(resolved_at__isnull=True).count() == 2
    assert selectors.cutover_summary().anomalies_open == 2


def test_the_last_fingerprint_makes_the_counters_say_ready(client, customer, tmp_path):
    _import(tmp_path, customer, 2)
    _inventory(client, _rotate(client, 0), "legacy-0")
    header = _rotate(client, 1)
    _heartbeat(client, header)

    assert not selectors.cutover_summary().decommission_ready
    _inventory(client, header, "legacy-1")

    summary = selectors.cutover_summary()
    assert summary.decommission_ready
    assert summary.remaining == 0
    assert summary.percent_done == 100.0


def test_a_rebuild_repairs_drifted_counters(client, customer, tmp_path):
    _import(tmp_path, customer, 3)
    _heartbeat(client, _rotate(client, 0))
    CutoverDay.objects.update(rotated=40, confirmed=-3)  # drift
    CutoverDay.objects.create(day="2020-01-01", mappings=5)

    days = services.cutover_counters_rebuild()

    assert days == 1
    assert _counted() == _recount()
