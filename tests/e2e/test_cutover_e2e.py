"""The whole credential cutover over HTTP, as the real scripts drive it.

Import mappings → the legacy client calls /proxy/credentials → uses the new pair on the
heartbeat → sends an inventory with the migration fingerprint → releases its legacy slot
→ the dashboard and the staff API say the legacy service can be switched off. And the
error paths: a lost response and its retry, an unknown pair, a released pair, throttling.
"""

import json

import pytest
from django.core.cache import cache
from django.core.management import call_command

from fleet_app import services
from fleet_app.demo import ns8_inventory
from tests.conftest import basic_auth

LEGACY = {f"legacy-{n}": f"token-{n}-{'x' * 20}" for n in range(3)}


@pytest.fixture(autouse=True)
def fresh_throttle(settings):
    settings.PROXY_THROTTLE_FAILURES = 5
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def imported(tmp_path, customer):
    path = tmp_path / "proxy_mappings.csv"
    path.write_text(
        "legacy_system_id,legacy_token,name\n"
        + "".join(f"{lid},{token},cluster {lid}\n" for lid, token in LEGACY.items())
    )
    call_command("import_legacy_mappings", str(path), "--apply", "--organization", customer.name)
    return LEGACY


def proxy_credentials(client, legacy_id, token, **extra):
    return client.get(
        "/proxy/credentials", HTTP_AUTHORIZATION=basic_auth(legacy_id, token), **extra
    )


def migrate_to_my(client, legacy_id, token):
    """What ns8's migrate-to-my then send-heartbeat/send-inventory do."""
    data = proxy_credentials(client, legacy_id, token).json()["data"]
    native = {"HTTP_AUTHORIZATION": basic_auth(data["system_key"], data["system_secret"])}
    heartbeat = client.post("/collect/api/systems/heartbeat", **native)
    inventory = client.post(
        "/collect/api/systems/inventory",
        json.dumps(
            ns8_inventory(
                seed=len(legacy_id),
                modules=4,
                from_legacy_system_id=legacy_id,
                migrated_at="2026-11-23T01:00:00Z",
            )
        ),
        content_type="application/json",
        **native,
    )
    # A worker drains the inbox: parse, diff, fingerprint.
    services.inventory_inbox_drain()
    return data, heartbeat, inventory


def summary(api_client):
    return api_client.get("/api/cutover/summary/").json()


@pytest.fixture
def staff(client, owner):
    from tests.factories import UserFactory

    user = UserFactory(email="ops@example.com", organization=owner, roles=["reader"])
    client.force_login(user)
    return client


def test_the_fleet_cuts_over_and_the_dashboard_says_done(client, imported, staff):
    before = summary(staff)
    assert before["totals"]["mappings"] == 3 and before["decommission_ready"] is False

    for legacy_id, token in imported.items():
        data, heartbeat, inventory = migrate_to_my(client, legacy_id, token)
        assert heartbeat.status_code == 200
        assert heartbeat.json()["data"]["system_key"] == data["system_key"]
        assert inventory.status_code == 202
        freekey = client.post("/api/Utils/freekey", {"lk": legacy_id, "secret": token})
        assert freekey.status_code == 200

    after = summary(staff)
    page = staff.get("/dashboard/cutover/")
    totals = after["totals"]
    assert totals["fingerprinted"] == totals["mappings"] == 3
    assert totals["rotated"] == totals["confirmed"] == totals["released"] == 3
    assert after["blockers"]["not_rotated"] == 0
    assert after["decommission_ready"] is True
    assert page.status_code == 200
    assert 'data-ready="yes"' in page.content.decode()


def test_a_lost_response_is_retried(client, imported, staff):
    legacy_id, token = next(iter(imported.items()))
    lost = proxy_credentials(client, legacy_id, token).json()["data"]

    data, heartbeat, _ = migrate_to_my(client, legacy_id, token)

    stale = client.post(
        "/collect/api/systems/heartbeat",
        HTTP_AUTHORIZATION=basic_auth(lost["system_key"], lost["system_secret"]),
    )
    assert stale.status_code == 401
    assert heartbeat.status_code == 200
    assert proxy_credentials(client, legacy_id, token).status_code == 409
    assert summary(staff)["totals"]["rotated"] == 1


def test_an_unknown_pair_a_released_pair_and_throttling(client, imported, staff):
    legacy_id, token = next(iter(imported.items()))
    assert proxy_credentials(client, "legacy-404", "nope").status_code == 401

    client.post("/api/Utils/freekey", {"lk": legacy_id, "secret": token})
    assert proxy_credentials(client, legacy_id, token).status_code == 403

    other_id, other_token = list(imported.items())[1]
    for _ in range(5):  # guessing from one address…
        guess = proxy_credentials(client, other_id, "guess", REMOTE_ADDR="198.51.100.9")
        assert guess.status_code == 401
    # …blocks that address, even with the right token (the owner's address is not blocked)
    throttled = proxy_credentials(client, other_id, other_token, REMOTE_ADDR="198.51.100.9")
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) > 0

    result = summary(staff)
    assert result["totals"]["rotated"] == 0 and result["totals"]["released"] == 1
    assert result["decommission_ready"] is False
    assert result["blockers"]["not_rotated"] == 3
