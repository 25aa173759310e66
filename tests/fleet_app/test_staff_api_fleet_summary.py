"""GET /api/fleet-summary/: counts by status and type of the caller's fleet."""

from rest_framework.test import APIClient

from tests.factories import SystemFactory


def test_it_costs_a_constant_number_of_queries(alice, customer, django_assert_num_queries):
    api = APIClient()
    api.force_login(alice)
    SystemFactory(organization=customer, type="ns8")
    # 1. the session            4. the caller's organization (scope path)
    # 2. the user               5. the counts by status (one aggregate with FILTERs)
    # 3. the caller's roles     6. the counts by type (GROUP BY type)
    with django_assert_num_queries(6):
        small = api.get("/api/fleet-summary/")
    SystemFactory.create_batch(5, organization=customer, type="nsec")
    with django_assert_num_queries(6):
        large = api.get("/api/fleet-summary/")
    assert small.status_code == large.status_code == 200
    assert large.json()["status"]["total"] == 6
