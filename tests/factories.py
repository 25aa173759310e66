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


def bulk_mappings(organization, count, *, prefix="bulk", **system_fields):
    """``count`` mappings with real digests, inserted in bulk (the import service makes
    them one transaction each, too slow for thousands)."""
    from fleet_app import credentials
    from fleet_app.models import System
    from migrations_app.models import LegacyMapping

    systems = []
    for number in range(count):
        public, secret = credentials.system_secret_generate()
        systems.append(
            System(
                organization=organization,
                name=f"{prefix}-{number}",
                system_key=credentials.system_key_generate(),
                secret_public=public,
                secret_digest=credentials.digest(secret),
                registered_at=timezone.now(),
                **system_fields,
            )
        )
    System.objects.bulk_create(systems, batch_size=1000)
    mappings = [
        LegacyMapping(
            legacy_system_id=f"{prefix}-{number:05d}",
            legacy_token_digest=credentials.digest(f"token-{prefix}-{number}"),
            system=system,
        )
        for number, system in enumerate(systems)
    ]
    LegacyMapping.objects.bulk_create(mappings, batch_size=1000)
    return mappings
