"""GET /api/systems/<id>/changes/: the changes found in one system's inventories."""

import pytest
from rest_framework.test import APIClient

from tests.factories import InventoryChangeFactory, SystemFactory


@pytest.fixture
def api(alice):
    client = APIClient()
    client.force_login(alice)
    return client


def url(system):
    return f"/api/systems/{system.pk}/changes/"


def test_it_lists_that_systems_changes_only(api, customer):
    system, neighbour = SystemFactory.create_batch(2, organization=customer)
    change = InventoryChangeFactory(system=system)
    InventoryChangeFactory(system=neighbour)

    response = api.get(url(system))

    assert [c["id"] for c in response.json()["results"]] == [change.pk]


def test_it_costs_a_constant_number_of_queries(api, customer, django_assert_num_queries):
    system = SystemFactory(organization=customer)
    InventoryChangeFactory(system=system)
    # 1. the session            4. the caller's organization (scope path)
    # 2. the user               5. the system, within the scope
    # 3. the caller's roles     6. the page of changes
    with django_assert_num_queries(6):
        small = api.get(url(system))
    InventoryChangeFactory.create_batch(10, system=system)
    with django_assert_num_queries(6):
        large = api.get(url(system))
    assert len(small.json()["results"]) == 1
    assert len(large.json()["results"]) == 11
