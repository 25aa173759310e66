"""Every factory builds a row the database and the model's validation accept, and a
second one beside it: sequences and sub-factories never clash."""

import pytest

from tests import factories

FACTORIES = [
    factories.OrganizationFactory,
    factories.UserFactory,
    factories.SystemFactory,
    factories.InventoryFactory,
    factories.InventoryChangeFactory,
    factories.LegacyMappingFactory,
    factories.FingerprintAnomalyFactory,
    factories.RotationRunFactory,
    factories.ClusterBackupFactory,
    factories.ServiceFactory,
    factories.BackupRunFactory,
    factories.RestoreRunFactory,
    factories.StorageHostFactory,
    factories.SnapshotPolicyFactory,
    factories.DatasetFactory,
    factories.ReplicationJobFactory,
]


@pytest.mark.django_db
@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_it_builds_a_valid_row_twice(factory):
    first, second = factory(), factory()

    assert first.pk != second.pk
    model = type(first)
    assert model.objects.filter(pk__in=[first.pk, second.pk]).count() == 2
    for row in (first, second):
        row.refresh_from_db()
        row.full_clean()


@pytest.mark.django_db
def test_a_cluster_backup_with_content_is_in_the_store(settings, tmp_path):
    import hashlib

    from backups_app.storage import get_store

    settings.BACKUP_STORAGE_URL = ""
    settings.BACKUP_LOCAL_ROOT = tmp_path / "store"

    backup = factories.ClusterBackupFactory(content=b"encrypted")

    backup.refresh_from_db()
    assert b"".join(get_store().read(backup.storage_key)) == b"encrypted"
    assert (backup.size, backup.sha256) == (9, hashlib.sha256(b"encrypted").hexdigest())


@pytest.mark.django_db
def test_a_restore_run_restores_a_finished_backup_of_its_service():
    restore = factories.RestoreRunFactory()

    assert restore.backup.state == "succeeded" and restore.backup.storage_key
    assert restore.service == restore.backup.service
