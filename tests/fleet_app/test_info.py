"""GET {collect_url}/info: the system's own subscription view."""

from django.utils import timezone

from fleet_app.models import System
from tests.conftest import basic_auth

URL = "/collect/api/systems/info"


def test_it_returns_the_systems_own_view(client, system, auth_header, customer):
    response = client.get(URL, **auth_header)

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["system_key"] == system.system_key
    assert data["name"] == "cluster-a"
    assert data["status"] == "unknown"
    assert data["registered"] is True
    assert data["organization"] == {"name": customer.name, "kind": "customer"}
    assert "secret" not in response.content.decode().lower().replace("system_key", "")


def test_each_system_sees_only_itself(client, system, other_system):
    response = client.get(
        URL, HTTP_AUTHORIZATION=basic_auth(other_system.system_key, other_system.issued_secret)
    )

    assert response.json()["data"]["system_key"] == other_system.system_key


def test_it_rejects_wrong_credentials(client, system):
    response = client.get(URL, HTTP_AUTHORIZATION=basic_auth(system.system_key, "my_x.y"))

    assert response.status_code == 401


def test_it_refuses_a_deleted_system(client, system, auth_header):
    System.objects.filter(pk=system.pk).update(deleted_at=timezone.now())

    assert client.get(URL, **auth_header).status_code == 403


def test_it_only_allows_get(client, system, auth_header):
    assert client.post(URL, **auth_header).status_code == 405


def test_it_costs_two_queries(client, system, auth_header, django_assert_num_queries):
    client.get(URL, **auth_header)  # the first call confirms the secret: once per secret
    # 1. SELECT the system by its unique system_key   2. SELECT its organization
    with django_assert_num_queries(2):
        response = client.get(URL, **auth_header)
    assert response.status_code == 200


# --- What ns8's get-subscription reads -------------------------------------------------------
# fetch_subscription_info_nsent reads data.system_id (the end of the portal link it shows),
# data.registered, data.suspended (shown as "inactive") and data.organization.name.


def _read_as_get_subscription(response) -> dict:
    body = response.json()
    data = body["data"]
    return {
        "system_id": data["system_id"],
        "registered": data["registered"],
        "suspended": data["suspended"],
        "organization": data["organization"]["name"],
        "kind": data["organization"]["kind"],
        "system_url": data["system_url"],
    }


def test_a_registered_system_reads_what_get_subscription_needs(
    client, system, auth_header, customer, settings
):
    settings.PUBLIC_BASE_URL = "https://my.example.com/"
    response = client.get(URL, **auth_header)

    assert response.status_code == 200
    assert _read_as_get_subscription(response) == {
        "system_id": system.system_key,
        "registered": True,
        "suspended": False,
        "organization": customer.name,
        "kind": "customer",
        "system_url": f"https://my.example.com/systems/{system.system_key}",
    }


def test_an_unregistered_system_with_its_secret_reads_that_it_is_not_registered(client, customer):
    from tests.factories import make_system

    pending = make_system(customer, name="not yet", registered=False)
    auth = {"HTTP_AUTHORIZATION": basic_auth(pending.system_key, pending.issued_secret)}

    response = client.get(URL, **auth)

    assert response.status_code == 200
    read = _read_as_get_subscription(response)
    assert read["system_id"] == pending.system_key
    assert read["registered"] is False and read["suspended"] is False
    assert read["organization"] == customer.name
    # Reading /info neither registers nor confirms anything.
    row = System.objects.get(pk=pending.pk)
    assert row.registered_at is None and row.secret_confirmed_at is None
    # Every other collect call still refuses it.
    assert client.post("/collect/api/systems/heartbeat", **auth).status_code == 403


def test_a_suspended_system_is_answered_200_with_suspended_true(
    client, system, auth_header, customer
):
    System.objects.filter(pk=system.pk).update(suspended_at=timezone.now())

    response = client.get(URL, **auth_header)

    assert response.status_code == 200
    read = _read_as_get_subscription(response)
    assert read["system_id"] == system.system_key
    assert read["registered"] is True and read["suspended"] is True
    assert read["organization"] == customer.name
    # Other collect calls keep refusing it.
    assert client.post("/collect/api/systems/heartbeat", **auth_header).status_code == 403
    assert (
        client.post(
            "/collect/api/systems/inventory", {}, content_type="application/json", **auth_header
        ).status_code
        == 403
    )


def test_a_suspended_system_with_a_wrong_secret_is_still_401(client, system):
    System.objects.filter(pk=system.pk).update(suspended_at=timezone.now())

    response = client.get(URL, HTTP_AUTHORIZATION=basic_auth(system.system_key, "my_x.y"))

    assert response.status_code == 401
