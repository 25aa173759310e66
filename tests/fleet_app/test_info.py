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


def test_it_refuses_a_suspended_system(client, system, auth_header):
    System.objects.filter(pk=system.pk).update(suspended_at=timezone.now())

    assert client.get(URL, **auth_header).status_code == 403


def test_it_only_allows_get(client, system, auth_header):
    assert client.post(URL, **auth_header).status_code == 405


def test_it_costs_two_queries(client, system, auth_header, django_assert_num_queries):
    client.get(URL, **auth_header)  # the first call confirms the secret: once per secret
    # 1. SELECT the system by its unique system_key   2. SELECT its organization
    with django_assert_num_queries(2):
        response = client.get(URL, **auth_header)
    assert response.status_code == 200
