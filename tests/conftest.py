"""Shared fixtures: personas (alice the operator, bob the reader, charlie the outsider)
and systems of two organizations, healthchecks-style."""

import base64

import pytest

from fleet_app import services
from fleet_app.demo import ns8_inventory
from fleet_app.models import Organization
from tests.factories import OrganizationFactory, UserFactory, make_system


@pytest.fixture
def owner(db):
    return OrganizationFactory(name="Owner", kind=Organization.Kind.OWNER)


@pytest.fixture
def distributor(owner):
    return services.organization_create(
        actor=None, name="Distributor", kind="distributor", parent=owner
    )


@pytest.fixture
def customer(distributor):
    return services.organization_create(
        actor=None, name="Customer A", kind="customer", parent=distributor
    )


@pytest.fixture
def other_customer(owner):
    return services.organization_create(
        actor=None, name="Customer B", kind="customer", parent=owner
    )


@pytest.fixture
def alice(distributor):
    """Operator: admin role at the distributor."""
    return UserFactory(email="alice@example.com", organization=distributor, roles=["admin"])


@pytest.fixture
def bob(customer):
    """Reader at one customer."""
    return UserFactory(email="bob@example.com", organization=customer, roles=["reader"])


@pytest.fixture
def charlie(other_customer):
    """Outsider: admin of another customer, outside the distributor's tree."""
    return UserFactory(email="charlie@example.com", organization=other_customer, roles=["admin"])


@pytest.fixture
def system(customer):
    return make_system(customer, name="cluster-a")


@pytest.fixture
def other_system(other_customer):
    return make_system(other_customer, name="cluster-b")


def basic_auth(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


@pytest.fixture
def auth_header(system):
    return {"HTTP_AUTHORIZATION": basic_auth(system.system_key, system.issued_secret)}


@pytest.fixture
def inventory_payload():
    """A realistic ns8 phonehome document (about 50 KB)."""
    return ns8_inventory(seed=7)
