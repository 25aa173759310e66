"""The storage sweep: orphan objects and unfinished uploads past the grace period go;
objects rows point at, young objects and other prefixes stay. On both backends."""

import datetime as dt
import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from backups_app.cluster_backups.models import ClusterBackup
from backups_app.service_backups.models import BackupRun, Service
from backups_app.sweep import storage_sweep
from tests.backups_app.helpers import payload, post_backup

pytestmark = pytest.mark.django_db

LATER = dt.timedelta(days=2)  # "now" for a sweep that sees every object as old


def _put(store, key: str, data: bytes = b"x") -> None:
    writer = store.writer(key)
    writer.write(data)
    writer.commit()


@pytest.fixture
def service(db):
    return Service.objects.create(name="cutover-db", adapter=Service.Adapter.POSTGRES, config={})


@pytest.fixture
def stored(client, system, store, service):
    """One of each: owned and orphan, cluster and service, plus a key of nobody's."""
    uploaded = post_backup(client, system, payload(1000))
    assert uploaded.status_code == 201
    owned_cluster = ClusterBackup.objects.get().storage_key
    orphan_cluster = f"cluster/{system.system_key}/0000-gone"
    _put(store, orphan_cluster)
    owned_service = "services/cutover-db/1.dump"
    pruned_service = "services/cutover-db/2.dump"
    for key in (owned_service, pruned_service):
        _put(store, key)
    BackupRun.objects.create(service=service, state="succeeded", storage_key=owned_service)
    BackupRun.objects.create(
        service=service, state="succeeded", storage_key=pruned_service, pruned_at=timezone.now()
    )
    _put(store, "elsewhere/not-ours")
    return {
        "owned": {owned_cluster, owned_service, "elsewhere/not-ours"},
        "orphans": {orphan_cluster, pruned_service},
    }


def test_a_dry_run_names_the_orphans_and_deletes_nothing(store, stored):
    before = set(store.keys())

    result = storage_sweep(apply=False, now=timezone.now() + LATER)

    assert set(result.orphans) == stored["orphans"]
    assert set(store.keys()) == before


def test_applied_it_deletes_only_the_orphans(store, stored):
    result = storage_sweep(apply=True, now=timezone.now() + LATER)

    assert set(result.orphans) == stored["orphans"] and result.failed == []
    assert set(store.keys()) == stored["owned"]


def test_objects_younger_than_the_grace_period_stay(store, stored):
    # Just written: an upload whose row may not be committed yet looks exactly like this.
    result = storage_sweep(apply=True)

    assert result.orphans == [] and result.unfinished == []
    assert set(store.keys()) == stored["owned"] | stored["orphans"]


def test_an_upload_left_unfinished_is_aborted_once_idle_past_the_grace(store):
    writer = store.writer("cluster/NETH-DEAD/never-committed")
    writer.write(b"half a backup")
    assert store.pending()

    result = storage_sweep(apply=True, now=timezone.now() + LATER)

    assert len(result.unfinished) == 1
    assert store.pending() == [] and store.keys() == []


def test_an_upload_still_being_written_stays(local_store):
    # Local folder only: the S3 server on loopback (moto) reports every multipart upload
    # as begun in 2010, where S3 itself reports the real time.
    writer = local_store.writer("cluster/NETH-BUSY/being-written")
    writer.write(b"the first chunk")

    assert storage_sweep(apply=True).unfinished == []
    writer.write(b"the next chunk")
    writer.commit()
    assert local_store.keys() == ["cluster/NETH-BUSY/being-written"]


def test_the_command_lists_then_applies(store, stored, monkeypatch):
    # The command sweeps "now" with the configured grace: make every object old enough.
    later = timezone.now() + LATER
    monkeypatch.setattr("backups_app.sweep.timezone.now", lambda: later)
    out = io.StringIO()

    call_command("storage_sweep", stdout=out)
    assert "nothing changed" in out.getvalue()
    assert set(store.keys()) == stored["owned"] | stored["orphans"]

    call_command("storage_sweep", "--apply", stdout=out)
    assert set(store.keys()) == stored["owned"]


def test_the_command_refuses_a_grace_under_an_hour(store, stored):
    with pytest.raises(CommandError, match="at least 1"):
        call_command("storage_sweep", "--apply", "--grace-hours", "0")
    assert set(store.keys()) == stored["owned"] | stored["orphans"]


def test_an_unreachable_store_is_one_sentence(settings):
    settings.BACKUP_STORAGE_URL = "s3://cutover-test/x"
    settings.BACKUP_S3_ENDPOINT_URL = "http://127.0.0.1:9"  # nothing listens there
    settings.BACKUP_S3_ACCESS_KEY_ID = settings.BACKUP_S3_SECRET_ACCESS_KEY = "test"
    settings.BACKUP_S3_REGION = "us-east-1"

    with pytest.raises(CommandError, match="could not be listed"):
        call_command("storage_sweep")
