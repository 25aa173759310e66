"""The admin changelists of the fleet's models cost a fixed number of queries: a page of
one row and a page of many run the same statements (no query per row).

Every list starts with the same four: 1. the session, 2. the user, 3. the user's roles,
and, for org-scoped models, 4. the user's organization (the scope path). Django's admin
adds the user's permissions (5. direct, 6. through groups) for the app list, the COUNT
of the (scoped, hence filtered) list and the page itself.
"""

import pytest
from django.urls import reverse
from knox.models import AuthToken

from fleet_app import services
from tests.factories import InventoryChangeFactory, SystemFactory, UserFactory

# model → (queries, what they are beyond session, user, roles and permissions)
CHANGELISTS = {
    # scope org, COUNT, page (parent joined)
    "fleet_app_organization": 8,
    # scope org, group filter choices, COUNT, page (organization joined)
    "fleet_app_user": 9,
    # COUNT, scope org (the header), page: the role groups are not org-scoped
    "auth_group": 8,
    # scope org, organization filter choices, COUNT, page (organization joined),
    # type filter values
    "fleet_app_system": 10,
    # scope org, organization filter choices, COUNT, page (system joined, no document)
    "fleet_app_inventory": 9,
    # scope org, organization filter choices, COUNT, page (system joined)
    "fleet_app_inventorychange": 9,
    # scope org, actions of the last 30 days (filter choices), COUNT, page (content
    # type and organization joined)
    "fleet_app_auditentry": 9,
    # scope org, COUNT, page (user joined)
    "knox_authtoken": 8,
}


def world(organization, rows):
    """``rows`` of each listed model in ``organization``."""
    for number in range(rows):
        system = SystemFactory(organization=organization)  # audited: an entry each
        InventoryChangeFactory(system=system)  # and its inventory
        user = UserFactory(organization=organization, roles=["reader"])
        AuthToken.objects.create(user=user)
        services.organization_create(
            actor=None, name=f"Sub {rows}-{number}", kind="customer", parent=organization
        )


@pytest.mark.parametrize(("model", "queries"), CHANGELISTS.items())
def test_a_changelist_costs_the_same_queries_for_one_row_or_many(
    client, alice, distributor, model, queries, django_assert_num_queries
):
    client.force_login(alice)
    url = reverse(f"admin:{model}_changelist")
    world(distributor, 1)
    with django_assert_num_queries(queries):
        one = client.get(url)
    world(distributor, 5)
    with django_assert_num_queries(queries):
        many = client.get(url)
    assert one.status_code == many.status_code == 200
    assert len(many.context["cl"].result_list) > len(one.context["cl"].result_list) or (
        model == "auth_group"
    )
