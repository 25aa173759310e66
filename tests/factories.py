"""factory-boy factories for the fleet graph. Systems are made through the service, so
their credentials are real (the clear secret is on ``system.issued_secret``)."""

import factory
from django.utils import timezone

from fleet_app import services
from fleet_app.models import Organization, User


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    kind = Organization.Kind.OWNER
    parent = None

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return services.organization_create(actor=None, **kwargs)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    organization = factory.SubFactory(OrganizationFactory)
    is_staff = True
    password = factory.PostGenerationMethodCall("set_password", "correct horse battery")

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        from django.contrib.auth.models import Group

        if create and extracted:
            self.groups.set(Group.objects.filter(name__in=extracted))
        if create:
            self.save()


def make_system(organization=None, *, name="cluster", registered=True, **fields):
    """A system with real credentials; registered unless told otherwise."""
    organization = organization or OrganizationFactory()
    issued = services.system_create(actor=None, organization=organization, name=name)
    system = issued.system
    if registered:
        services.system_register(system_secret=issued.system_secret)
    for key, value in fields.items():
        setattr(system, key, value)
    if fields:
        system.save(update_fields=list(fields))
    system.refresh_from_db()
    system.issued_secret = issued.system_secret
    return system


def now():
    return timezone.now()


def make_mapping(
    organization,
    *,
    legacy_system_id="legacy-1",
    legacy_token="legacy-token-1",
    born_registered=False,
):
    """A legacy mapping and its native system, imported as the command does."""
    from migrations_app import services as cutover
    from migrations_app.models import LegacyMapping

    report = cutover.mappings_import(
        rows=[
            (
                1,
                {
                    "legacy_system_id": legacy_system_id,
                    "legacy_token": legacy_token,
                    "name": f"legacy {legacy_system_id}",
                },
            )
        ],
        apply=True,
        default_organization=organization,
        born_registered=born_registered,
    )
    assert not report.errors, report.errors
    mapping = LegacyMapping.objects.select_related("system").get(legacy_system_id=legacy_system_id)
    mapping.legacy_token = legacy_token
    return mapping
