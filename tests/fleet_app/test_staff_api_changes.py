"""GET /api/changes/: inventory changes across the caller's fleet, newest first."""

import pytest
from rest_framework.test import APIClient

from tests.factories import InventoryChangeFactory, SystemFactory

URL = "/api/changes/"


@pytest.fixture
def api(alice):
    client = APIClient()
    client.force_login(alice)
    return client


def test_it_lists_only_the_callers_changes(api, customer, other_customer):
    mine = InventoryChangeFactory(system=SystemFactory(organization=customer))
    InventoryChangeFactory(system=SystemFactory(organization=other_customer))

    response = api.get(URL)

    assert response.status_code == 200
    assert [c["id"] for c in response.json()["results"]] == [mine.pk]


def test_it_costs_a_constant_number_of_queries(api, customer, django_assert_num_queries):
    systems = SystemFactory.create_batch(3, organization=customer)
    InventoryChangeFactory(system=systems[0])
    # 1. the session            3. the caller's roles
    # 2. the user               4. the caller's organization (scope path)
    # 5. the page of changes (the scope is a join, no per-row query)
    with django_assert_num_queries(5):
        small = api.get(URL)
    for system in systems:
        InventoryChangeFactory.create_batch(5, system=system)
    with django_assert_num_queries(5):
        large = api.get(URL)
    assert len(small.json()["results"]) == 1
    assert len(large.json()["results"]) == 16
