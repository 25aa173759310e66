"""factory-boy factories for the object graphs tests and benchmarks need.

Systems, organizations and legacy mappings are made through their services, so their
credentials and paths are real (a system's clear secret is on ``system.issued_secret``).
Models of the other apps are named by label (``"backups_app.Dataset"``): factory-boy
finds them in the app registry when a factory is first used, so this file imports no
app's models module but fleet's, and keeps working whichever module a model lives in.
"""

import hashlib
import json
import uuid

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


class SystemFactory(factory.django.DjangoModelFactory):
    """``make_system`` as a factory, for SubFactory: registered, real credentials."""

    class Meta:
        model = "fleet_app.System"

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"cluster-{n}")
    registered = True

    @classmethod
    def _create(cls, model_class, *args, organization, name, registered, **fields):
        return make_system(organization, name=name, registered=registered, **fields)


class InventoryFactory(factory.django.DjangoModelFactory):
    """A stored inventory row (what the inbox drain writes), not a POST to the endpoint."""

    class Meta:
        model = "fleet_app.Inventory"

    system = factory.SubFactory(SystemFactory)
    data = factory.Sequence(lambda n: {"uuid": f"inventory-{n}", "facts": {"version": "8.0"}})
    size = factory.LazyAttribute(lambda o: len(json.dumps(o.data)))


class InventoryChangeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "fleet_app.InventoryChange"

    system = factory.SubFactory(SystemFactory)
    inventory = factory.SubFactory(InventoryFactory, system=factory.SelfAttribute("..system"))
    path = factory.Sequence(lambda n: f"facts.setting_{n}")
    severity = "info"
    old = 1
    new = 2


def make_mapping(
    organization,
    *,
    legacy_system_id="legacy-1",
    legacy_token="legacy-token-1",
    born_registered=False,
):
    """A legacy mapping and its native system, imported as the command does."""
    from migrations_app.cutover import services as cutover
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


class LegacyMappingFactory(factory.django.DjangoModelFactory):
    """``make_mapping`` as a factory: each call imports a fresh legacy pair."""

    class Meta:
        model = "migrations_app.LegacyMapping"

    organization = factory.SubFactory(OrganizationFactory)
    legacy_system_id = factory.Sequence(lambda n: f"legacy-m{n}")
    legacy_token = factory.Sequence(lambda n: f"legacy-token-m{n}")
    born_registered = False

    @classmethod
    def _create(cls, model_class, *args, organization, **kwargs):
        return make_mapping(organization, **kwargs)


class FingerprintAnomalyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "migrations_app.FingerprintAnomaly"

    system = factory.SubFactory(SystemFactory)
    kind = "unknown"
    claimed_legacy_system_id = factory.Sequence(lambda n: f"claimed-{n}")


class RotationRunFactory(factory.django.DjangoModelFactory):
    """A bulk rotation run as staff start it: pending, over every mapping."""

    class Meta:
        model = "migrations_app.RotationRun"


class ClusterBackupFactory(factory.django.DjangoModelFactory):
    """A cluster backup row; ``content=b"…"`` also puts the object in the blob store (and
    sets ``size`` and ``sha256`` from it), for a test that downloads or verifies it."""

    class Meta:
        model = "backups_app.ClusterBackup"
        skip_postgeneration_save = True

    id = factory.LazyFunction(uuid.uuid4)
    system = factory.SubFactory(SystemFactory)
    # Copied from the system, as the upload service does.
    organization = factory.SelfAttribute("system.organization")
    filename = factory.Sequence(lambda n: f"backup-{n}.json.gz.gpg")
    size = 1
    sha256 = "0" * 64
    # The upload service's key shape, so sweeps and downloads find it where they look.
    storage_key = factory.LazyAttribute(lambda o: f"cluster/{o.system.system_key}/{o.id}")

    @factory.post_generation
    def content(self, create, extracted, **kwargs):
        if not create or extracted is None:
            return
        from backups_app.storage import get_store

        writer = get_store().writer(self.storage_key)
        writer.write(extracted)
        writer.commit()
        self.size, self.sha256 = len(extracted), hashlib.sha256(extracted).hexdigest()
        self.save(update_fields=["size", "sha256"])


class ServiceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "backups_app.Service"

    name = factory.Sequence(lambda n: f"service-{n}")
    adapter = "directory"
    config = factory.Sequence(lambda n: {"path": f"/srv/service-{n}"})


class BackupRunFactory(factory.django.DjangoModelFactory):
    """A pending backup of a service; ``finished=True`` makes it one a restore can use."""

    class Meta:
        model = "backups_app.BackupRun"

    class Params:
        finished = factory.Trait(
            state="succeeded",
            finished_at=factory.LazyFunction(timezone.now),
            storage_key=factory.LazyAttribute(
                lambda o: f"services/{o.service.name}/{uuid.uuid4()}"
            ),
            size=1,
            sha256="0" * 64,
        )

    service = factory.SubFactory(ServiceFactory)


class RestoreRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "backups_app.RestoreRun"

    backup = factory.SubFactory(BackupRunFactory, finished=True)
    service = factory.SelfAttribute("backup.service")


class StorageHostFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "backups_app.StorageHost"

    name = factory.Sequence(lambda n: f"host-{n}")
    # A remote host: what clean() asks of any host not named in ZFS_LOCAL_HOSTS.
    address = factory.Sequence(lambda n: f"zfs{n}.example")
    user = "zfsoperator"
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedKey"


class SnapshotPolicyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "backups_app.SnapshotPolicy"

    name = factory.Sequence(lambda n: f"policy-{n}")


class DatasetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "backups_app.Dataset"

    host = factory.SubFactory(StorageHostFactory)
    name = factory.Sequence(lambda n: f"tank/data-{n}")
    policy = None


class ReplicationJobFactory(factory.django.DjangoModelFactory):
    """A pull of one dataset onto another host's."""

    class Meta:
        model = "backups_app.ReplicationJob"

    name = factory.Sequence(lambda n: f"job-{n}")
    source = factory.SubFactory(DatasetFactory)
    target = factory.SubFactory(DatasetFactory)
