"""POST /backend/api/systems/register: verify a staff-created system's secret once."""

import json

import pytest

from fleet_app.models import AuditEntry, System
from tests.factories import make_system

URL = "/backend/api/systems/register"


def post(client, body, **extra):
    return client.post(URL, data=body, content_type="application/json", **extra)


@pytest.fixture
def unregistered(customer):
    return make_system(customer, name="fresh", registered=False)


def test_it_registers_and_returns_the_system_key(client, unregistered):
    response = post(client, json.dumps({"system_secret": unregistered.issued_secret}))

    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 200
    assert body["data"]["system_key"] == unregistered.system_key
    assert body["data"]["collect_url"].endswith("/collect/api/systems")
    unregistered.refresh_from_db()
    assert unregistered.registered_at is not None


def test_it_accepts_a_trailing_slash_and_no_csrf_token(unregistered):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    response = client.post(
        URL + "/",
        data=json.dumps({"system_secret": unregistered.issued_secret}),
        content_type="application/json",
    )
    assert response.status_code == 200


def test_a_second_registration_is_a_conflict(client, unregistered):
    body = json.dumps({"system_secret": unregistered.issued_secret})
    post(client, body)
    first = System.objects.get(pk=unregistered.pk).registered_at

    response = post(client, body)

    assert response.status_code == 409
    assert "already registered" in response.json()["message"]
    assert System.objects.get(pk=unregistered.pk).registered_at == first


@pytest.mark.parametrize(
    "secret",
    ["my_nothere.nothing", "not-a-secret", "my_.x", "my_abc"],
)
def test_it_rejects_an_unknown_secret(client, unregistered, secret):
    response = post(client, json.dumps({"system_secret": secret}))

    assert response.status_code == 401
    assert response.json()["code"] == 401
    assert System.objects.get(pk=unregistered.pk).registered_at is None


def test_it_rejects_a_right_lookup_part_with_a_wrong_secret(client, unregistered):
    public_part = unregistered.issued_secret.split(".")[0]

    response = post(client, json.dumps({"system_secret": public_part + ".wrong"}))

    assert response.status_code == 401
    assert System.objects.get(pk=unregistered.pk).registered_at is None


@pytest.mark.parametrize("field", ["suspended_at", "deleted_at"])
def test_it_refuses_suspended_or_deleted_systems(client, customer, field):
    from django.utils import timezone

    system = make_system(customer, registered=False, **{field: timezone.now()})

    response = post(client, json.dumps({"system_secret": system.issued_secret}))

    assert response.status_code == 403
    assert System.objects.get(pk=system.pk).registered_at is None


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        "[]",
        json.dumps({}),
        json.dumps({"system_secret": 5}),
        "[" * 100_000 + "]" * 100_000,  # was a 500: the JSON reader recursed too deep
    ],
)
def test_it_answers_400_for_a_malformed_body(client, unregistered, body):
    audit_before = AuditEntry.objects.count()

    response = post(client, body)

    assert response.status_code == 400
    assert response.json()["message"]
    assert System.objects.get(pk=unregistered.pk).registered_at is None
    assert AuditEntry.objects.count() == audit_before


def test_it_only_allows_post(client, unregistered):
    response = client.get(URL)

    assert response.status_code == 405
    assert response["Allow"] == "POST"


@pytest.mark.parametrize("secret", ["my_\u0000.\u0000", "my_\ud800.x", "my_caf\u00e9.x"])
def test_a_secret_with_nul_or_not_ascii_is_unknown_not_a_crash(client, unregistered, secret):
    """A NUL was a 500 on PostgreSQL (the public part is a query parameter)."""
    response = post(client, json.dumps({"system_secret": secret}))

    assert response.status_code == 401
    assert response.json()["message"] == "Unknown system secret."


def test_it_costs_two_queries(client, unregistered, django_assert_num_queries):
    # 1. SELECT the system by the secret's public part (indexed)
    # 2. UPDATE registered_at WHERE registered_at IS NULL (the claim)
    with django_assert_num_queries(2):
        response = post(client, json.dumps({"system_secret": unregistered.issued_secret}))
    assert response.status_code == 200
