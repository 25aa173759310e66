"""selectors.organization_resolve: an id, a slug, or a name only when it is unique."""

import pytest

from fleet_app import selectors, services
from fleet_app.errors import InvalidInput
from fleet_app.models import Organization

pytestmark = pytest.mark.django_db


@pytest.fixture
def twins(owner):
    """Two customers of different tenants with the same name."""
    first = services.organization_create(actor=None, name="Acme", kind="customer", parent=owner)
    second = services.organization_create(actor=None, name="Acme", kind="customer", parent=owner)
    return first, second


def resolve(reference: str) -> Organization:
    return selectors.organization_resolve(reference, within=Organization.objects.all())


def test_creation_gives_each_twin_its_own_slug(twins):
    assert [o.slug for o in twins] == ["acme", "acme-2"]


def test_it_resolves_an_id_and_a_slug(twins):
    first, second = twins

    assert resolve(str(second.pk)) == second
    assert resolve("acme-2") == second
    assert resolve(" acme ") == first


def test_it_resolves_a_name_that_only_one_organization_has(twins, customer):
    assert resolve("Customer A") == customer


def test_it_refuses_an_ambiguous_name_naming_every_candidate(twins):
    first, second = twins

    with pytest.raises(InvalidInput) as refused:
        resolve("Acme")

    assert refused.value.message == (
        f"2 organizations are named 'Acme': acme (id {first.pk}), acme-2 (id {second.pk}); "
        "give the slug or the id."
    )


@pytest.mark.parametrize("reference", ["Nowhere", "99999999999999999999999", "٣", ""])
def test_it_refuses_an_unknown_reference_with_a_sentence(owner, reference):
    with pytest.raises(InvalidInput, match=r"^(No organization has|The organization is empty)"):
        resolve(reference)


def test_nothing_outside_within_is_found_or_named(twins):
    first, second = twins
    within = Organization.objects.filter(pk=first.pk)

    assert selectors.organization_resolve("Acme", within=within) == first
    with pytest.raises(InvalidInput, match="No organization has"):
        selectors.organization_resolve(str(second.pk), within=within)


def test_a_given_slug_is_validated_and_must_be_free(owner):
    services.organization_create(actor=None, name="X", kind="customer", parent=owner, slug="x-1")

    with pytest.raises(InvalidInput, match="already has the slug 'x-1'"):
        services.organization_create(
            actor=None, name="Y", kind="customer", parent=owner, slug="x-1"
        )
    with pytest.raises(InvalidInput, match="only letters, digits"):
        services.organization_create(
            actor=None, name="Y", kind="customer", parent=owner, slug="a b"
        )


def test_a_name_without_latin_letters_still_gets_a_slug(owner):
    org = services.organization_create(actor=None, name="東京", kind="customer", parent=owner)

    assert org.slug == "organization"
