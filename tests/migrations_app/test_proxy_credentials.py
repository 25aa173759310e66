"""GET /proxy/credentials: a legacy pair swapped for native credentials."""

import pytest
from django.utils import timezone

from fleet_app.models import AuditEntry, System
from migrations_app.models import CutoverDay, LegacyMapping
from tests.conftest import basic_auth
from tests.factories import make_mapping

URL = "/proxy/credentials"
HEARTBEAT = "/collect/api/systems/heartbeat"


@pytest.fixture(autouse=True)
def fresh_throttle(settings):
    from django.core.cache import cache

    cache.clear()
    settings.PROXY_THROTTLE_FAILURES = 3
    yield
    cache.clear()


@pytest.fixture
def mapping(customer):
    return make_mapping(customer)


def rotate(client, mapping, token=None, **extra):
    return client.get(
        URL,
        HTTP_AUTHORIZATION=basic_auth(mapping.legacy_system_id, token or mapping.legacy_token),
        **extra,
    )


def heartbeat(client, key, secret):
    return client.post(HEARTBEAT, HTTP_AUTHORIZATION=basic_auth(key, secret))


def test_it_hands_out_native_credentials(client, mapping):
    response = rotate(client, mapping)

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    data = response.json()["data"]
    assert data["system_key"] == mapping.system.system_key
    assert data["system_secret"].startswith("my_")
    assert data["collect_url"].endswith("/collect/api/systems")
    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.rotated_at is not None and row.rotation_count == 1
    assert row.legacy_token_digest == mapping.legacy_token_digest  # preserved
    assert System.objects.get(pk=mapping.system_id).registered_at is not None
    assert heartbeat(client, data["system_key"], data["system_secret"]).status_code == 200


def test_a_lost_response_is_retried_and_the_previous_secret_dies(client, mapping):
    first = rotate(client, mapping).json()["data"]
    second = rotate(client, mapping).json()["data"]

    assert first["system_secret"] != second["system_secret"]
    assert heartbeat(client, first["system_key"], first["system_secret"]).status_code == 401
    assert heartbeat(client, second["system_key"], second["system_secret"]).status_code == 200
    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.rotation_count == 2
    assert CutoverDay.objects.get().rotated == 1  # counted once


def test_once_confirmed_further_rotation_is_a_conflict(client, mapping):
    data = rotate(client, mapping).json()["data"]
    heartbeat(client, data["system_key"], data["system_secret"])

    response = rotate(client, mapping)

    assert response.status_code == 409
    assert "re-open" in response.json()["message"]
    assert LegacyMapping.objects.get(pk=mapping.pk).confirmed_at is not None
    # the native secret in use still works
    assert heartbeat(client, data["system_key"], data["system_secret"]).status_code == 200


def test_staff_can_reopen_a_confirmed_mapping(client, mapping, alice):
    from migrations_app import services

    data = rotate(client, mapping).json()["data"]
    heartbeat(client, data["system_key"], data["system_secret"])

    services.mapping_reopen(actor=alice, mapping=mapping)
    response = rotate(client, mapping)

    assert response.status_code == 200
    assert AuditEntry.objects.filter(action="mapping.reopen", actor=alice).exists()
    assert CutoverDay.objects.get().confirmed == 0


@pytest.mark.parametrize(
    "legacy_id, token",
    [("legacy-1", "wrong"), ("nobody", "legacy-token-1")],
)
def test_an_unknown_pair_is_401_and_writes_nothing(client, mapping, legacy_id, token):
    response = client.get(URL, HTTP_AUTHORIZATION=basic_auth(legacy_id, token))

    assert response.status_code == 401
    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.rotated_at is None and row.rotation_count == 0


def test_missing_credentials_are_401(client, mapping):
    assert client.get(URL).status_code == 401


def test_a_released_pair_is_403(client, mapping):
    LegacyMapping.objects.filter(pk=mapping.pk).update(released_at=timezone.now())

    response = rotate(client, mapping)

    assert response.status_code == 403
    assert LegacyMapping.objects.get(pk=mapping.pk).rotated_at is None


def test_a_suspended_system_is_403(client, mapping):
    System.objects.filter(pk=mapping.system_id).update(suspended_at=timezone.now())

    assert rotate(client, mapping).status_code == 403
    assert LegacyMapping.objects.get(pk=mapping.pk).rotated_at is None


def test_failed_attempts_are_throttled_per_legacy_id(client, mapping):
    for _ in range(3):
        assert rotate(client, mapping, token="wrong").status_code == 401

    response = rotate(client, mapping)  # even the right token waits now

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert LegacyMapping.objects.get(pk=mapping.pk).rotated_at is None


def test_failed_attempts_are_throttled_per_address(client, customer):
    victims = [
        make_mapping(customer, legacy_system_id=f"l{i}", legacy_token=f"t{i}") for i in range(2)
    ]
    for i in range(3):
        client.get(URL, HTTP_AUTHORIZATION=basic_auth(f"guess{i}", "x"), REMOTE_ADDR="192.0.2.7")

    blocked = rotate(client, victims[0], REMOTE_ADDR="192.0.2.7")
    elsewhere = rotate(client, victims[1], REMOTE_ADDR="192.0.2.8")

    assert blocked.status_code == 429
    assert elsewhere.status_code == 200


def test_it_only_allows_get(client, mapping):
    assert client.post(URL, HTTP_AUTHORIZATION=basic_auth("legacy-1", "x")).status_code == 405


def test_born_registered_systems_rotate_too(client, customer):
    mapping = make_mapping(customer, legacy_system_id="b1", legacy_token="tb", born_registered=True)
    registered = System.objects.get(pk=mapping.system_id).registered_at

    data = rotate(client, mapping).json()["data"]

    assert System.objects.get(pk=mapping.system_id).registered_at == registered
    assert heartbeat(client, data["system_key"], data["system_secret"]).status_code == 200
