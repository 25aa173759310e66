"""What the README promises and a first day checks: /api/cutover/ answers its index, an
unknown /api/ address is the API's JSON 404 even with DEBUG on, the Python version is the
package's, and the benchmark prerequisites are named."""

import re
import tomllib
from pathlib import Path

import pytest

from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parent.parent


def test_the_cutover_api_answers_an_index_of_its_sub_paths(client, owner):
    client.force_login(UserFactory(email="ops@example.org", organization=owner, roles=["reader"]))

    response = client.get("/api/cutover/")

    assert response.status_code == 200
    assert set(response.json()) == {"summary", "stragglers", "anomalies", "mappings"}
    assert response.json()["summary"].endswith("/api/cutover/summary/")


def test_the_cutover_api_index_is_closed_to_anonymous_callers(client, db):
    assert client.get("/api/cutover/").status_code == 401


@pytest.mark.parametrize("debug", [False, True])
def test_an_unknown_api_address_is_a_json_404_even_with_debug_on(client, db, settings, debug):
    settings.DEBUG = debug

    response = client.get("/api/no-such-thing/")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "No staff API route matches this address."}


def test_an_api_address_without_its_slash_is_still_redirected(client, db):
    response = client.get("/api/systems?status=active")

    assert response.status_code == 301
    assert response["Location"] == "/api/systems/?status=active"


def test_the_readme_python_version_is_the_package_s():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    (version,) = re.findall(r"Python (3\.\d+) or newer", (ROOT / "README.md").read_text())[:1]
    assert requires == f">={version}"
    assert "FROM python:3.12-" in (ROOT / "docker" / "Dockerfile").read_text()


def test_the_readme_names_the_benchmark_prerequisites():
    readme = (ROOT / "README.md").read_text()
    assert "**`wrk`**" in readme and "**`hey`**" in readme
