"""The staff REST API: org-scoped lists of systems, inventories and changes."""

import json

import pytest
from rest_framework.test import APIClient

from fleet_app import services, tokens
from fleet_app.models import InventoryChange
from tests.factories import UserFactory, make_system


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def fleet(customer, other_customer):
    return {
        "a1": make_system(customer, name="a1"),
        "a2": make_system(customer, name="a2"),
        "b1": make_system(other_customer, name="b1"),
    }


def names(response):
    return sorted(s["name"] for s in response.json()["results"])


def test_it_requires_authentication_and_says_how(api, fleet):
    response = api.get("/api/systems/")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_a_staff_account_without_a_role_is_refused(api, customer, fleet):
    api.force_authenticate(UserFactory(organization=customer, roles=[]))

    assert api.get("/api/systems/").status_code == 403


def test_an_operator_sees_everything_below_their_organization(api, alice, fleet):
    api.force_authenticate(alice)

    response = api.get("/api/systems/")

    assert response.status_code == 200
    assert names(response) == ["a1", "a2"]


def test_an_outsider_sees_only_their_own(api, charlie, fleet):
    api.force_authenticate(charlie)

    assert names(api.get("/api/systems/")) == ["b1"]
    assert api.get(f"/api/systems/{fleet['a1'].pk}/").status_code == 404


def test_token_authentication_works(api, alice, bob, fleet):
    _, token = tokens.api_token_create(actor=alice, user=bob, expires_in=None)
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")

    assert names(api.get("/api/systems/")) == ["a1", "a2"]


def test_it_filters_by_status_and_search(api, alice, fleet, client):
    from django.utils import timezone

    fleet["a1"].__class__.objects.filter(pk=fleet["a1"].pk).update(last_heartbeat_at=timezone.now())
    api.force_authenticate(alice)

    assert names(api.get("/api/systems/?status=active")) == ["a1"]
    assert names(api.get("/api/systems/?status=unknown")) == ["a2"]
    assert names(api.get("/api/systems/?q=A2")) == ["a2"]
    assert names(api.get(f"/api/systems/?q={fleet['a1'].system_key}")) == ["a1"]
    assert api.get("/api/systems/?status=bogus").status_code == 400


def test_the_system_list_never_exposes_secrets(api, alice, fleet):
    api.force_authenticate(alice)

    body = api.get("/api/systems/").content.decode()

    assert "secret" not in body
    assert fleet["a1"].issued_secret not in body


def test_the_system_list_costs_a_constant_number_of_queries(
    api, alice, customer, django_assert_num_queries
):
    api.force_login(alice)
    for i in range(3):
        make_system(customer, name=f"s{i}")
    # 1. the session            3. the caller's roles
    # 2. the user               4. the caller's organization (scope path)
    # 5. the page of systems joined with their organization
    with django_assert_num_queries(5):
        small = api.get("/api/systems/")
    for i in range(3, 30):
        make_system(customer, name=f"s{i}")
    with django_assert_num_queries(5):
        large = api.get("/api/systems/")
    assert len(small.json()["results"]) == 3
    assert len(large.json()["results"]) == 30


def test_inventories_and_changes_of_a_system(api, alice, fleet, inventory_payload):
    system = fleet["a1"]
    services.inventory_ingest(system=system, payload=inventory_payload, size=1)
    inventory_payload["facts"]["nodes"]["1"]["version"] = "4.0.0"
    latest = services.inventory_ingest(system=system, payload=inventory_payload, size=1)
    api.force_authenticate(alice)

    inventories = api.get(f"/api/systems/{system.pk}/inventories/").json()["results"]
    changes = api.get(f"/api/systems/{system.pk}/changes/").json()["results"]
    document = api.get(f"/api/inventories/{latest.pk}/").json()

    assert len(inventories) == 2 and "data" not in inventories[0]
    assert [c["path"] for c in changes] == ["facts.nodes.1.version"]
    assert document["data"]["facts"]["nodes"]["1"]["version"] == "4.0.0"
    assert InventoryChange.objects.count() == 1


def test_an_outsider_cannot_read_another_organizations_inventory(
    api, charlie, fleet, inventory_payload
):
    inventory = services.inventory_ingest(system=fleet["a1"], payload=inventory_payload, size=1)
    api.force_authenticate(charlie)

    assert api.get(f"/api/inventories/{inventory.pk}/").status_code == 404
    assert api.get("/api/changes/").json()["results"] == []


def test_fleet_summary_counts(api, alice, fleet):
    api.force_authenticate(alice)

    body = api.get("/api/fleet-summary/").json()

    assert body["status"]["total"] == 2
    assert body["status"]["unknown"] == 2


def test_the_openapi_schema_and_docs_are_served(api, alice, client):
    api.force_authenticate(alice)

    schema = api.get("/api/schema/?format=json")
    client.force_login(alice)
    docs = client.get("/api/docs/")

    assert schema.status_code == 200
    assert "/api/systems/" in json.loads(schema.content)["paths"]
    assert docs.status_code == 200


# --- Bad input: a clear 4xx, one sentence (found by tests/test_api_fuzz.py) -----------------


@pytest.mark.parametrize("page_size", ["0", "-1", "1001", "null", "1.5", "ten", "99999999999"])
def test_a_wrong_page_size_is_400_not_ignored(api, alice, fleet, page_size):
    api.force_authenticate(alice)

    response = api.get("/api/systems/", {"page_size": page_size})

    assert response.status_code == 400
    assert response.json() == {"page_size": ["Give page_size as a whole number from 1 to 1000."]}


def test_a_page_size_in_bounds_or_blank_is_taken(api, alice, fleet):
    api.force_authenticate(alice)

    assert len(api.get("/api/systems/", {"page_size": "1"}).json()["results"]) == 1
    assert len(api.get("/api/systems/", {"page_size": ""}).json()["results"]) == 2


def test_a_deleted_filter_that_is_not_true_or_false_is_400(api, alice, fleet):
    api.force_authenticate(alice)

    response = api.get("/api/systems/", {"deleted": "-58800"})

    assert response.status_code == 400
    assert response.json() == {"deleted": ["Give true or false."]}
    assert names(api.get("/api/systems/", {"deleted": "false"})) == ["a1", "a2"]
    assert names(api.get("/api/systems/", {"deleted": ""})) == ["a1", "a2"]


@pytest.mark.parametrize(
    "path",
    ["/api/systems/0.5/changes/", "/api/cutover/anomalies/-3.9e-67/", "/api/no-such-thing/"],
)
def test_an_address_no_api_route_matches_is_a_json_404(api, alice, path):
    api.force_authenticate(alice)

    response = api.get(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "No staff API route matches this address."}


def test_an_address_outside_the_api_still_gets_the_page(client, db):
    response = client.get("/dashboard/no-such-thing/")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    "query",
    [
        {"organization": "99999999999999999999"},
        {"organization": "-1"},
        {"seen_before": "not a date"},
        {"seen_after": "99999-01-01T00:00:00Z"},
    ],
)
def test_out_of_range_or_malformed_filters_are_400(api, alice, fleet, query):
    api.force_authenticate(alice)

    response = api.get("/api/systems/", query)

    assert response.status_code == 400, response.content
    [(field, [message])] = response.json().items()
    assert field in query and message.endswith(".")


def test_an_id_too_large_for_the_database_is_404(api, alice, fleet):
    api.force_authenticate(alice)

    assert api.get("/api/systems/99999999999999999999/").status_code == 404
    assert api.get("/api/changes/99999999999999999999/").status_code == 404


def test_the_schema_documents_the_errors_and_the_fleet_summary(api, alice):
    api.force_authenticate(alice)

    paths = api.get("/api/schema/", {"format": "json"}).json()["paths"]

    listing = paths["/api/systems/"]["get"]
    assert set(listing["responses"]) == {"200", "400", "401", "403", "404"}
    page_size = next(p for p in listing["parameters"] if p["name"] == "page_size")
    assert page_size["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert set(paths["/api/systems/{id}/"]["get"]["responses"]) == {"200", "401", "403", "404"}
    summary = paths["/api/fleet-summary/"]["get"]["responses"]["200"]["content"]
    assert summary["application/json"]["schema"] == {"$ref": "#/components/schemas/FleetSummary"}
