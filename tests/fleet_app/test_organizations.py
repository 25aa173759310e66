"""Organizations: the owner → distributor → reseller → customer tree and scoping by it."""

import pytest
from django.db import IntegrityError, transaction

from fleet_app import selectors, services
from fleet_app.errors import InvalidInput
from fleet_app.models import AuditEntry, Organization
from tests.factories import UserFactory


def test_paths_follow_the_tree(owner, distributor, customer):
    assert owner.path == f"/{owner.pk}/"
    assert customer.path == f"/{owner.pk}/{distributor.pk}/{customer.pk}/"


@pytest.mark.parametrize(
    "kind, parent_kind",
    [("distributor", "customer"), ("reseller", "customer"), ("owner", "owner")],
)
def test_it_refuses_a_kind_under_the_wrong_parent(owner, customer, kind, parent_kind):
    parent = customer if parent_kind == "customer" else owner
    before = Organization.objects.count()

    with pytest.raises(InvalidInput):
        services.organization_create(actor=None, name="x", kind=kind, parent=parent)

    assert Organization.objects.count() == before


def test_a_non_owner_needs_a_parent(db):
    with pytest.raises(InvalidInput, match="must have a parent"):
        services.organization_create(actor=None, name="x", kind="customer")


def test_the_database_refuses_a_rootless_customer(db):
    with pytest.raises(IntegrityError), transaction.atomic():
        Organization.objects.create(name="x", kind="customer")


def test_creation_is_audited(alice, distributor):
    org = services.organization_create(
        actor=alice, name="Reseller R", kind="reseller", parent=distributor
    )

    entry = AuditEntry.objects.get(action="organization.create", object_id=str(org.pk))
    assert entry.actor == alice
    assert entry.after["name"] == "Reseller R"


def test_a_user_sees_their_subtree_only(owner, distributor, customer, other_customer):
    at_distributor = UserFactory(organization=distributor, roles=["reader"])

    visible = set(selectors.organizations_visible_to(at_distributor))

    assert visible == {distributor, customer}
    assert other_customer not in visible


def test_a_user_without_organization_sees_nothing(db):
    assert not selectors.organizations_visible_to(UserFactory(organization=None)).exists()
