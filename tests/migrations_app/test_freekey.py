"""POST /api/Utils/freekey: release the legacy slot (form fields lk, secret)."""

import pytest

from migrations_app.models import CutoverDay, LegacyMapping
from tests.factories import make_mapping

URL = "/api/Utils/freekey"


@pytest.fixture(autouse=True)
def fresh_throttle():
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def mapping(customer):
    return make_mapping(customer)


def test_it_releases_once_and_is_idempotent(client, mapping):
    first = client.post(URL, {"lk": mapping.legacy_system_id, "secret": mapping.legacy_token})
    released_at = LegacyMapping.objects.get(pk=mapping.pk).released_at
    second = client.post(URL, {"lk": mapping.legacy_system_id, "secret": mapping.legacy_token})

    assert first.status_code == second.status_code == 200
    assert released_at is not None
    assert LegacyMapping.objects.get(pk=mapping.pk).released_at == released_at
    assert CutoverDay.objects.get().released == 1


def test_a_wrong_secret_is_401(client, mapping):
    response = client.post(URL, {"lk": mapping.legacy_system_id, "secret": "nope"})

    assert response.status_code == 401
    assert LegacyMapping.objects.get(pk=mapping.pk).released_at is None


@pytest.mark.parametrize("form", [{}, {"lk": "legacy-1"}, {"secret": "x"}])
def test_missing_fields_are_400(client, mapping, form):
    response = client.post(URL, form)

    assert response.status_code == 400
    assert "lk and secret" in response.json()["message"]


def test_it_only_allows_post(client, mapping):
    assert client.get(URL).status_code == 405


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--x\r\n", "multipart/form-data"),  # no boundary
        (b"lk=a&secret=b" + b"&x=1" * 2_000, "application/x-www-form-urlencoded"),
    ],
)
def test_a_body_django_cannot_read_as_a_form_is_400_in_the_envelope(
    client, mapping, body, content_type
):
    """Django answered its own HTML 400 page here, not the envelope."""
    response = client.generic("POST", URL, body, content_type=content_type)

    assert response.status_code == 400
    assert response.json()["message"] == "The body must be a form with the fields lk and secret."
    mapping.refresh_from_db()
    assert mapping.released_at is None


def test_a_legacy_id_with_nul_is_400(client, mapping):
    """It was a 500 on PostgreSQL (the id is a query parameter)."""
    response = client.post(URL, {"lk": "legacy-1\x00", "secret": "legacy-token-1"})

    assert response.status_code == 400
    assert "NUL" in response.json()["message"]
