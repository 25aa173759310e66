"""The services API (superusers only): list, overview and starting a backup."""

import pytest
from rest_framework.test import APIClient

from backups_app.service_backups.services import service_create
from tests.factories import UserFactory


@pytest.fixture
def api(customer):
    client = APIClient()
    client.force_authenticate(UserFactory(organization=customer, is_superuser=True))
    return client


@pytest.fixture
def services(db, tmp_path):
    for name in ("zeta", "alpha", "mid"):
        folder = tmp_path / name
        folder.mkdir()
        service_create(actor=None, name=name, adapter="directory", config={"path": str(folder)})


def test_the_service_list_pages_in_name_order(api, services):
    """It paginated by a ``created`` field Service does not have: every call was a 500."""
    first = api.get("/api/backups/services/", {"cursor": ""})

    assert first.status_code == 200, first.content
    assert [s["name"] for s in first.json()["results"]] == ["alpha", "mid", "zeta"]


def test_the_overview_is_a_list_as_documented(api, services):
    response = api.get("/api/backups/services/overview/")
    paths = api.get("/api/schema/", {"format": "json"}).json()["paths"]

    assert [row["service"] for row in response.json()] == ["alpha", "mid", "zeta"]
    documented = paths["/api/backups/services/overview/"]["get"]["responses"]["200"]
    assert documented["content"]["application/json"]["schema"]["type"] == "array"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"service": ""}, "This field may not be null."),
        ({"service": "nope"}, "Object with name=nope does not exist."),
        ({}, "This field is required."),
    ],
)
def test_starting_a_backup_of_no_service_is_400(api, services, body, message):
    response = api.post("/api/backups/backup-runs/", body, format="json")

    assert response.status_code == 400
    assert response.json() == {"service": [message]}


def test_the_schema_says_a_service_name_is_a_non_empty_slug(api):
    schema = api.get("/api/schema/", {"format": "json"}).json()

    service = schema["components"]["schemas"]["BackupRunCreate"]["properties"]["service"]
    assert service == {"type": "string", "minLength": 1, "pattern": "^[-a-zA-Z0-9_]+$"}
