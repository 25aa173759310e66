"""GET /api/systems/<id>/inventories/: a system's inventories, without their documents."""

import pytest
from rest_framework.test import APIClient

from tests.factories import InventoryFactory, SystemFactory


@pytest.fixture
def api(alice):
    client = APIClient()
    client.force_login(alice)
    return client


def url(system):
    return f"/api/systems/{system.pk}/inventories/"


def test_another_organizations_system_is_not_there(api, other_customer):
    system = SystemFactory(organization=other_customer)
    InventoryFactory(system=system)

    assert api.get(url(system)).status_code == 404


def test_it_costs_a_constant_number_of_queries(api, customer, django_assert_num_queries):
    system = SystemFactory(organization=customer)
    InventoryFactory(system=system)
    # 1. the session            4. the caller's organization (scope path)
    # 2. the user               5. the system, within the scope
    # 3. the caller's roles     6. the page of inventories (documents deferred)
    with django_assert_num_queries(6):
        small = api.get(url(system))
    InventoryFactory.create_batch(10, system=system)
    with django_assert_num_queries(6):
        large = api.get(url(system))
    assert len(small.json()["results"]) == 1
    assert len(large.json()["results"]) == 11
    assert "data" not in large.json()["results"][0]
