"""Every /proxy/credentials call leaves a trace: on its mapping, in the day's counts by
outcome, on the cutover dashboard, in the staff API and in /metrics — refusals too."""

import re

import pytest
from django.test import Client
from django.utils import timezone

from fleet_app.models import AuditEntry, System
from migrations_app.models import LegacyMapping, ProxyAttemptDay
from tests.conftest import basic_auth
from tests.factories import UserFactory, make_mapping

CREDENTIALS = "/proxy/credentials"
HEARTBEAT = "/collect/api/systems/heartbeat"
DASHBOARD = "/dashboard/cutover/"
ADDRESS = "198.51.100.9"


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


@pytest.fixture
def staff(owner):
    """Support at the root organization: reads the cutover dashboard and may re-open."""
    return UserFactory(email="sam@example.com", organization=owner, roles=["support"])


def call(client, mapping, token=None, address=ADDRESS):
    return client.get(
        CREDENTIALS,
        HTTP_AUTHORIZATION=basic_auth(mapping.legacy_system_id, token or mapping.legacy_token),
        REMOTE_ADDR=address,
    )


def confirm(client, mapping):
    data = call(client, mapping).json()["data"]
    auth = basic_auth(data["system_key"], data["system_secret"])
    assert client.post(HEARTBEAT, HTTP_AUTHORIZATION=auth).status_code == 200
    return data


def day_count(outcome: str) -> int:
    row = ProxyAttemptDay.objects.filter(day=timezone.now().date(), outcome=outcome).first()
    return row.count if row else 0


def metric(client, metrics_auth, outcome: str) -> float:
    body = client.get("/metrics", headers=metrics_auth).content.decode()
    found = re.search(rf'^cutover_proxy_attempts_total{{outcome="{outcome}"}} (\S+)$', body, re.M)
    assert found, body
    return float(found.group(1))


def api_mapping(client, staff, mapping) -> dict:
    client.force_login(staff)
    return client.get(f"/api/cutover/mappings/{mapping.pk}/").json()


def assert_recorded(mapping, outcome: str):
    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.last_attempt_outcome == outcome
    assert row.last_attempt_address == ADDRESS
    assert timezone.now() - row.last_attempt_at < timezone.timedelta(minutes=1)
    return row


def assert_refusal_shown(client, staff, mapping, outcome: str, metrics_auth):
    assert day_count(outcome) >= 1
    assert metric(client, metrics_auth, outcome) >= 1
    client.force_login(staff)
    page = client.get(DASHBOARD)
    refused = {m.legacy_system_id: m.last_attempt_outcome for m in page.context["refused"]}
    assert refused.get(mapping.legacy_system_id) == outcome
    html = page.content.decode()
    assert f'data-outcome="{outcome}"' in html
    counts = {row["outcome"]: row["count"] for row in page.context["attempts"]}
    assert counts[outcome] >= 1
    detail = api_mapping(client, staff, mapping)
    assert detail["last_attempt_outcome"] == outcome
    assert detail["last_attempt_address"] == ADDRESS


def test_a_200_is_recorded_and_counted(client, mapping, staff, metrics_auth):
    assert call(client, mapping).status_code == 200

    assert_recorded(mapping, "200")
    assert day_count("200") == 1
    assert metric(client, metrics_auth, "200") == 1
    client.force_login(staff)
    page = client.get(DASHBOARD)
    assert page.context["refused"] == []  # an answered call is no refusal
    assert {r["outcome"]: r["count"] for r in page.context["attempts"]}["200"] == 1


def test_a_401_wrong_token_is_recorded_and_shown(client, mapping, staff, metrics_auth):
    assert call(client, mapping, token="wrong").status_code == 401

    row = assert_recorded(mapping, "401")
    assert row.rotated_at is None and row.rotation_count == 0  # nothing else changed
    assert_refusal_shown(client, staff, mapping, "401", metrics_auth)


def test_a_401_for_a_legacy_id_nobody_has_is_counted(client, db, metrics_auth):
    response = client.get(CREDENTIALS, HTTP_AUTHORIZATION=basic_auth("nobody", "x"))

    assert response.status_code == 401
    assert day_count("401") == 1
    assert metric(client, metrics_auth, "401") == 1


def test_a_403_released_is_recorded_and_shown(client, mapping, staff, metrics_auth):
    LegacyMapping.objects.filter(pk=mapping.pk).update(released_at=timezone.now())

    assert call(client, mapping).status_code == 403

    row = assert_recorded(mapping, "403")
    assert row.rotated_at is None
    assert_refusal_shown(client, staff, mapping, "403", metrics_auth)


def test_a_403_suspended_is_recorded_and_shown(client, mapping, staff, metrics_auth):
    System.objects.filter(pk=mapping.system_id).update(suspended_at=timezone.now())

    assert call(client, mapping).status_code == 403

    assert_recorded(mapping, "403")
    assert_refusal_shown(client, staff, mapping, "403", metrics_auth)


def test_a_409_after_cutover_is_recorded_and_listed_as_knocking(
    client, mapping, staff, metrics_auth
):
    confirm(client, mapping)

    # A cluster restored from a backup taken before its cutover knocks with its legacy pair.
    assert call(client, mapping).status_code == 409

    row = assert_recorded(mapping, "409")
    assert row.knocked_at is not None and row.knocked_at > row.confirmed_at
    assert row.fingerprint_at is None
    assert_refusal_shown(client, staff, mapping, "409", metrics_auth)
    page = client.get(DASHBOARD)
    assert [m.pk for m in page.context["knocking"]] == [mapping.pk]
    html = page.content.decode()
    assert f'action="/dashboard/cutover/mappings/{mapping.pk}/reopen"' in html
    assert api_mapping(client, staff, mapping)["knocking"] is True


def test_a_429_is_recorded_and_shown(client, mapping, staff, metrics_auth):
    for _ in range(3):
        assert call(client, mapping, token="wrong").status_code == 401

    response = call(client, mapping)  # the right pair, from the address that guessed

    assert response.status_code == 429
    assert_recorded(mapping, "429")
    assert_refusal_shown(client, staff, mapping, "429", metrics_auth)
    assert day_count("401") == 3 and day_count("429") == 1


@pytest.mark.django_db(transaction=True)
def test_the_record_outlives_the_refusing_transaction(customer):
    """No test transaction around it: what the refusal rolled back is gone, its trace is
    not."""
    mapping = make_mapping(customer)
    client = Client()
    confirm(client, mapping)

    assert call(client, mapping).status_code == 409

    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.last_attempt_outcome == "409" and row.knocked_at is not None
    assert row.rotation_count == 1  # the refused call changed nothing else
    assert day_count("409") == 1


def test_one_click_reopen_from_the_knocking_list(client, mapping, staff):
    confirm(client, mapping)
    call(client, mapping)
    client.force_login(staff)

    response = client.post(f"/dashboard/cutover/mappings/{mapping.pk}/reopen")

    assert response.status_code == 302
    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.confirmed_at is None and row.reopened_at is not None
    assert AuditEntry.objects.filter(action="mapping.reopen", actor=staff).exists()
    assert client.get(DASHBOARD).context["knocking"] == []
    # The restored cluster's next migrate-to-my gets fresh credentials.
    assert call(client, mapping).status_code == 200


def test_reopen_is_a_post_and_follows_the_table(client, mapping, owner, alice):
    confirm(client, mapping)
    call(client, mapping)
    url = f"/dashboard/cutover/mappings/{mapping.pk}/reopen"
    reader = UserFactory(email="rita@example.com", organization=owner, roles=["reader"])
    support = UserFactory(email="sam@example.com", organization=owner, roles=["support"])

    client.force_login(support)
    assert client.get(url).status_code == 405
    assert client.post("/dashboard/cutover/mappings/999999/reopen").status_code == 404
    client.force_login(reader)  # reads the dashboard, may not re-open
    assert client.post(url).status_code == 403
    assert "data-reopen" not in client.get(DASHBOARD).content.decode()
    client.force_login(alice)  # an admin below the root: the cutover is fleet-wide
    assert client.post(url).status_code == 403
    client.logout()
    assert client.post(url).status_code == 302  # to the login
    assert LegacyMapping.objects.get(pk=mapping.pk).confirmed_at is not None


def test_an_unconfirmed_mapping_is_reopened_from_the_dashboard_too(client, mapping, staff):
    import datetime as dt

    from fleet_app.models import PendingSecret

    data = call(client, mapping).json()["data"]
    PendingSecret.objects.filter(system_id=mapping.system_id).update(
        issued_at=timezone.now() - dt.timedelta(days=1)
    )
    client.force_login(staff)
    assert f'data-renew="{mapping.pk}"' in client.get(DASHBOARD).content.decode()

    client.post(f"/dashboard/cutover/mappings/{mapping.pk}/reopen")

    auth = basic_auth(data["system_key"], data["system_secret"])
    # The newest secret always works; the renewed pending row is what an older one needs.
    assert PendingSecret.objects.get(system_id=mapping.system_id).issued_at > timezone.now() - (
        dt.timedelta(minutes=1)
    )
    assert client.post(HEARTBEAT, HTTP_AUTHORIZATION=auth).status_code == 200
