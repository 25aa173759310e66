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


def test_a_lost_response_is_retried_and_the_unused_secret_dies_once_one_is_used(client, mapping):
    first = rotate(client, mapping).json()["data"]
    second = rotate(client, mapping).json()["data"]

    assert first["system_secret"] != second["system_secret"]
    assert heartbeat(client, second["system_key"], second["system_secret"]).status_code == 200
    assert heartbeat(client, first["system_key"], first["system_secret"]).status_code == 401
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
    from migrations_app.cutover import services

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


def guess(client, legacy_id, address, **extra):
    return client.get(
        URL, HTTP_AUTHORIZATION=basic_auth(legacy_id, "wrong"), REMOTE_ADDR=address, **extra
    )


def test_the_guessing_address_is_throttled_even_with_the_right_token(client, mapping):
    for _ in range(3):
        assert guess(client, mapping.legacy_system_id, "192.0.2.7").status_code == 401

    response = rotate(client, mapping, REMOTE_ADDR="192.0.2.7")

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert "this address" in response.json()["message"]
    assert LegacyMapping.objects.get(pk=mapping.pk).rotated_at is None


def test_a_correct_credential_rotates_after_20_bad_attempts_from_another_address(client, mapping):
    answers = [guess(client, mapping.legacy_system_id, "192.0.2.7") for _ in range(20)]

    response = rotate(client, mapping, REMOTE_ADDR="198.51.100.20")

    assert [a.status_code for a in answers[:3]] == [401] * 3
    assert {a.status_code for a in answers[3:]} == {429}
    assert all(int(a["Retry-After"]) > 0 for a in answers[3:])
    assert response.status_code == 200
    assert LegacyMapping.objects.get(pk=mapping.pk).rotation_count == 1


def test_bad_attempts_from_many_addresses_on_one_id_do_not_lock_out_the_owner(client, mapping):
    for i in range(20):
        assert guess(client, mapping.legacy_system_id, f"192.0.2.{i + 1}").status_code == 401

    response = rotate(client, mapping, REMOTE_ADDR="198.51.100.20")

    assert response.status_code == 200


def test_an_id_over_the_limit_stays_closed_to_addresses_that_failed_for_it(client, mapping):
    for i in range(3):
        guess(client, mapping.legacy_system_id, f"192.0.2.{i + 1}")
    # One failure each is under the per-address limit, but the id is over its own.

    again = rotate(client, mapping, REMOTE_ADDR="192.0.2.1")
    elsewhere = rotate(client, mapping, REMOTE_ADDR="198.51.100.20")

    assert again.status_code == 429
    assert elsewhere.status_code == 200


def test_a_failing_address_is_throttled_for_every_id(client, customer):
    victims = [
        make_mapping(customer, legacy_system_id=f"l{i}", legacy_token=f"t{i}") for i in range(2)
    ]
    for i in range(3):
        guess(client, f"guess{i}", "192.0.2.7")

    blocked = rotate(client, victims[0], REMOTE_ADDR="192.0.2.7")
    elsewhere = rotate(client, victims[1], REMOTE_ADDR="192.0.2.8")

    assert blocked.status_code == 429
    assert elsewhere.status_code == 200


def test_one_ipv6_network_is_one_address(client, mapping):
    for i in range(3):
        guess(client, f"guess{i}", f"2001:db8:1:2::{i + 1}")

    response = rotate(client, mapping, REMOTE_ADDR="2001:db8:1:2::99")

    assert response.status_code == 429


def test_x_forwarded_for_is_ignored_without_trusted_proxies(client, mapping, settings):
    settings.TRUSTED_PROXY_COUNT = 0
    for i in range(3):
        # Each guess claims another address; all come from one peer.
        guess(client, mapping.legacy_system_id, "192.0.2.7", HTTP_X_FORWARDED_FOR=f"10.9.0.{i}")

    response = rotate(client, mapping, REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR="10.9.0.99")

    assert response.status_code == 429


def test_x_forwarded_for_is_used_behind_one_proxy(client, mapping, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    for _ in range(3):
        guess(client, mapping.legacy_system_id, "10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.7")

    blocked = rotate(client, mapping, REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.7")
    # The client cannot shed its bucket by writing an address of its own in front.
    spoofed = rotate(
        client, mapping, REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.5, 192.0.2.7"
    )

    assert blocked.status_code == spoofed.status_code == 429


def test_behind_one_proxy_two_clients_get_separate_buckets(client, customer, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    victims = [
        make_mapping(customer, legacy_system_id=f"l{i}", legacy_token=f"t{i}") for i in range(2)
    ]
    for i in range(3):
        guess(client, f"guess{i}", "10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.7")

    blocked = rotate(client, victims[0], REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.7")
    other = rotate(client, victims[1], REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.8")

    assert blocked.status_code == 429
    assert other.status_code == 200


def test_a_cache_outage_fails_open_and_says_so(client, mapping, caplog, monkeypatch):
    from django.core.cache import cache

    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    for name in ("get_many", "add", "incr"):
        monkeypatch.setattr(cache, name, down)
    for _ in range(5):
        assert guess(client, mapping.legacy_system_id, "192.0.2.7").status_code == 401

    response = rotate(client, mapping, REMOTE_ADDR="192.0.2.7")

    assert response.status_code == 200
    assert "throttle cache unavailable; not throttling" in caplog.text
    assert "throttle cache unavailable; failure not counted" in caplog.text


def test_it_only_allows_get(client, mapping):
    assert client.post(URL, HTTP_AUTHORIZATION=basic_auth("legacy-1", "x")).status_code == 405


def test_born_registered_systems_rotate_too(client, customer):
    mapping = make_mapping(customer, legacy_system_id="b1", legacy_token="tb", born_registered=True)
    registered = System.objects.get(pk=mapping.system_id).registered_at

    data = rotate(client, mapping).json()["data"]

    assert System.objects.get(pk=mapping.system_id).registered_at == registered
    assert heartbeat(client, data["system_key"], data["system_secret"]).status_code == 200


def test_retry_after_is_the_time_left_in_the_window(client, mapping, settings, monkeypatch):
    import time

    from migrations_app.cutover import throttle

    settings.PROXY_THROTTLE_WINDOW_SECONDS = 900
    start = time.time()
    for _ in range(3):
        guess(client, mapping.legacy_system_id, "192.0.2.7")
    first = rotate(client, mapping, REMOTE_ADDR="192.0.2.7")
    # Ten minutes into the window, five are left.
    monkeypatch.setattr(throttle, "_clock", lambda: start + 600)
    later = rotate(client, mapping, REMOTE_ADDR="192.0.2.7")

    assert first.status_code == later.status_code == 429
    assert 890 <= int(first["Retry-After"]) <= 900
    assert 300 <= int(later["Retry-After"]) <= 305
