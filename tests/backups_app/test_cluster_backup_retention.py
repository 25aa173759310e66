"""Retention per system: at most N backups and S bytes, oldest pruned by a task after uploads."""

import datetime as dt

import pytest
from django.test import override_settings
from django.utils import timezone

from backups_app.cluster_backups import services
from backups_app.cluster_backups.models import ClusterBackup
from fleet_app.models import Quota
from tests.backups_app.helpers import payload, post_backup

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def commit_callbacks(monkeypatch):
    """Run the object deletions the prune schedules after commit at once: the test's
    transaction never commits."""
    monkeypatch.setattr(
        "backups_app.cluster_backups.services.transaction.on_commit",
        lambda callback, **kwargs: callback(),
    )


def test_it_keeps_the_newest_n_backups(client, system, other_system, store, settings):
    settings.CLUSTER_BACKUP_KEEP_COUNT = 3
    ids = []
    for n in range(5):
        response = post_backup(client, system, payload(100, seed=n))
        ids.append(response.json()["data"]["id"])
    post_backup(client, other_system, b"untouched")
    kept = list(
        ClusterBackup.objects.filter(system=system)
        .order_by("uploaded_at")
        .values_list("pk", flat=True)
    )
    assert [str(pk) for pk in kept] == ids[2:]
    assert len(store.keys()) == 4  # three of system, one of other_system
    quota = Quota.objects.get(organization=system.organization, resource="backup_bytes")
    assert quota.usage == 300


def test_it_keeps_at_most_s_bytes_but_always_the_newest(client, system, store, settings):
    settings.CLUSTER_BACKUP_KEEP_BYTES = 250
    for n in range(3):
        post_backup(client, system, payload(100, seed=n))
    assert ClusterBackup.objects.count() == 2
    # A backup larger than S on its own is still kept: it is the newest.
    post_backup(client, system, payload(400, seed=9))
    assert list(ClusterBackup.objects.values_list("size", flat=True)) == [400]
    assert len(store.keys()) == 1


def test_pruning_follows_upload_time_not_insertion_order(system, store):
    now = timezone.now()
    rows = []
    for n, age in enumerate([1, 5, 3]):
        key = f"cluster/{system.system_key}/x{n}"
        writer = store.writer(key)
        writer.write(b"x")
        writer.commit()
        rows.append(
            ClusterBackup.objects.create(
                system=system,
                organization=system.organization,
                filename=f"f{n}",
                size=1,
                sha256="0" * 64,
                storage_key=key,
                uploaded_at=now - dt.timedelta(days=age),
            )
        )
    dropped = services.cluster_backups_prune(system_id=system.pk, keep_count=2, keep_bytes=10)
    assert [b.filename for b in dropped] == ["f1"]
    assert sorted(store.keys()) == sorted([rows[0].storage_key, rows[2].storage_key])


def test_the_upload_leaves_retention_to_its_task(client, system, store, settings, monkeypatch):
    """The request only nudges the task (in-process here, as in the embedded default);
    with a broker, a worker runs it, and beat's sweep makes up for a lost nudge."""
    settings.CLUSTER_BACKUP_KEEP_COUNT = 1
    nudged = []
    monkeypatch.setattr("fleet_app.runs.task_nudge", lambda name, every: nudged.append(name))
    post_backup(client, system, payload(10, seed=1))
    post_backup(client, system, payload(10, seed=2))

    assert nudged == [services.PRUNE_TASK] * 2
    assert ClusterBackup.objects.filter(system=system).count() == 2
    assert services.cluster_backups_prune_recent() == 1
    assert ClusterBackup.objects.filter(system=system).count() == 1


def test_the_sweep_looks_only_at_systems_that_uploaded_lately(system, other_system, store):
    long_ago = timezone.now() - dt.timedelta(days=3)
    for owner, when in ((system, long_ago), (other_system, timezone.now())):
        for n in range(3):
            ClusterBackup.objects.create(
                system=owner,
                organization=owner.organization,
                filename=f"f{n}",
                size=1,
                sha256="0" * 64,
                storage_key=f"cluster/{owner.system_key}/y{n}",
                uploaded_at=when - dt.timedelta(minutes=n),
            )

    with override_settings(CLUSTER_BACKUP_KEEP_COUNT=1):
        assert services.cluster_backups_prune_recent() == 2

    assert ClusterBackup.objects.filter(system=system).count() == 3
    assert ClusterBackup.objects.filter(system=other_system).count() == 1
