"""/systems/<system_key>: the staff page the link a cluster shows lands on."""

import pytest

from fleet_app import services
from tests.conftest import basic_auth
from tests.factories import UserFactory


@pytest.fixture
def named(client, system, auth_header, inventory_payload):
    """A system staff named, whose cluster calls itself something else."""
    response = client.post(
        "/collect/api/systems/inventory",
        inventory_payload,
        content_type="application/json",
        **auth_header,
    )
    assert response.status_code == 202
    services.inventory_inbox_drain()
    system.refresh_from_db()
    return system


def test_staff_of_the_systems_tenant_see_it_with_both_names(client, named, bob):
    client.force_login(bob)

    response = client.get(f"/systems/{named.system_key}")

    assert response.status_code == 200
    html = response.content.decode()
    assert named.system_key in html
    assert named.name == "cluster-a"
    assert named.ui_name and named.ui_name != named.name
    assert 'id="system-name">cluster-a<' in html
    assert f'id="system-ui-name">{named.ui_name}<' in html
    # A trailing slash lands on the same page.
    assert client.get(f"/systems/{named.system_key}/").status_code == 200


def test_outside_the_viewers_tenant_it_is_a_404_like_an_unknown_key(client, system, charlie):
    client.force_login(charlie)

    assert client.get(f"/systems/{system.system_key}").status_code == 404
    assert client.get("/systems/NETH-0000").status_code == 404


def test_the_platform_sees_every_tenants_system(client, system, other_system):
    admin = UserFactory(email="root@example.com", organization=None, is_superuser=True)
    client.force_login(admin)

    assert client.get(f"/systems/{system.system_key}").status_code == 200
    assert client.get(f"/systems/{other_system.system_key}").status_code == 200


def test_it_needs_a_signed_in_staff_account_with_a_role(client, system, customer):
    response = client.get(f"/systems/{system.system_key}")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]

    nobody = UserFactory(email="nobody@example.com", organization=customer)
    client.force_login(nobody)
    assert client.get(f"/systems/{system.system_key}").status_code == 403


def test_the_info_link_points_at_this_page(client, system, auth_header, bob, settings):
    settings.PUBLIC_BASE_URL = "http://testserver"
    link = client.get("/collect/api/systems/info", **auth_header).json()["data"]["system_url"]
    client.force_login(bob)

    assert client.get(link.removeprefix("http://testserver")).status_code == 200


def test_a_name_staff_gave_survives_inventories(client, named, alice):
    services._system_set(actor=alice, system=named, action="system.rename", name="Head office")

    response = client.post(
        "/collect/api/systems/inventory",
        {"facts": {"cluster": {"ui_name": "renamed on the cluster"}}},
        content_type="application/json",
        HTTP_AUTHORIZATION=basic_auth(named.system_key, named.issued_secret),
    )

    assert response.status_code == 202
    services.inventory_inbox_drain()
    named.refresh_from_db()
    assert (named.name, named.ui_name) == ("Head office", "renamed on the cluster")
