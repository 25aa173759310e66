"""/api/schema/ and /api/docs/: for signed-in, active staff accounts only (session or
token); the schema refuses in JSON, the docs page sends a browser to the admin login."""

import pytest
from knox.models import AuthToken

from tests.factories import UserFactory

SCHEMA = "/api/schema/"
DOCS = "/api/docs/"


@pytest.fixture
def outsider(customer):
    """Signed in, but not staff."""
    return UserFactory(email="visitor@example.com", organization=customer, is_staff=False)


@pytest.fixture
def retired(customer):
    """Staff once, deactivated since."""
    return UserFactory(email="retired@example.com", organization=customer, is_active=False)


def token_header(user) -> dict[str, str]:
    _, token = AuthToken.objects.create(user=user)
    return {"Authorization": f"Token {token}"}


def test_it_refuses_the_schema_to_anonymous_callers_in_json(client, db):
    for accept in ("*/*", "application/vnd.oai.openapi", "application/json"):
        response = client.get(SCHEMA, headers={"Accept": accept})

        # 401 as everywhere in the staff API: token authentication is asked for.
        assert response.status_code == 401
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"detail": "Authentication credentials were not provided."}


def test_it_refuses_the_schema_to_a_non_staff_account(client, outsider):
    client.force_login(outsider)

    response = client.get(SCHEMA)

    assert response.status_code == 403
    assert "staff account" in response.json()["detail"]


def test_it_refuses_the_schema_to_an_inactive_account(client, retired):
    client.force_login(retired)  # a session made before the account was deactivated

    assert client.get(SCHEMA).status_code == 401


def test_it_refuses_an_unknown_token(client, db):
    response = client.get(SCHEMA, headers={"Authorization": "Token not-a-token"})

    # 401 as everywhere in the staff API.
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}


def test_it_serves_the_schema_to_staff_with_a_session(client, bob):
    client.force_login(bob)

    response = client.get(SCHEMA)

    assert response.status_code == 200
    assert b"Cutover staff API" in response.content


def test_it_serves_the_schema_to_staff_with_a_token(client, bob):
    response = client.get(SCHEMA, headers={**token_header(bob), "Accept": "application/json"})

    assert response.status_code == 200
    assert response.json()["info"]["title"] == "Cutover staff API"


def test_it_sends_anonymous_browsers_from_the_docs_to_the_admin_login(client, db):
    response = client.get(DOCS)

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/api/docs/"


def test_it_sends_a_non_staff_account_from_the_docs_to_the_admin_login(client, outsider):
    client.force_login(outsider)

    response = client.get(DOCS)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_it_refuses_the_docs_script_to_anonymous_callers(client, db):
    assert client.get(DOCS + "?script").status_code == 302


def test_it_serves_the_docs_to_staff(client, bob):
    client.force_login(bob)

    page = client.get(DOCS)
    script = client.get(DOCS + "?script")

    assert page.status_code == 200
    # The start-up script is a file of its own, not inline (Content Security Policy).
    assert b'<script src="/api/docs/?script=">' in page.content
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle" in script.content


def test_it_serves_the_docs_to_staff_with_a_token(client, bob):
    assert client.get(DOCS, headers=token_header(bob)).status_code == 200
