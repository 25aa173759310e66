"""GET list, GET one (streamed, verified), DELETE: a system sees only its own backups."""

import pytest

from backups_app.cluster_backups import services
from backups_app.cluster_backups.models import ClusterBackup
from backups_app.errors import BackupCorrupt
from fleet_app.models import AuditEntry, Quota
from tests.backups_app.helpers import URL, auth, payload, post_backup, sha256

pytestmark = pytest.mark.django_db


def upload(client, system, body=b"backup bytes", filename="dump.json.gz.gpg") -> str:
    response = post_backup(client, system, body, filename=filename)
    assert response.status_code == 201, response.content
    return response.json()["data"]["id"]


def test_it_lists_only_the_systems_own_backups(
    client, system, other_system, django_assert_num_queries
):
    first = upload(client, system, b"one")
    second = upload(client, system, b"two")
    upload(client, other_system, b"theirs")
    # auth (1), the system's backups newest first (1)
    with django_assert_num_queries(2):
        response = client.get(URL, **auth(system))
    assert response.status_code == 200
    ids = [row["id"] for row in response.json()["data"]["backups"]]
    assert ids == [second, first]


def test_it_streams_a_backup_back_with_its_name_and_checksum(client, system, store, settings):
    settings.CLUSTER_BACKUP_CHUNK_BYTES = 64 * 1024
    body = payload(6 * 1024 * 1024 + 7)
    backup_id = upload(client, system, body)
    response = client.get(f"{URL}/{backup_id}", **auth(system))
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Disposition"] == 'attachment; filename="dump.json.gz.gpg"'
    assert response["Content-Length"] == str(len(body))
    assert response["X-Checksum-SHA256"] == sha256(body)
    assert b"".join(response.streaming_content) == body


def test_a_trailing_slash_is_optional(client, system):
    backup_id = upload(client, system)
    assert client.get(f"{URL}/", **auth(system)).status_code == 200
    assert client.get(f"{URL}/{backup_id}/", **auth(system)).status_code == 200


def test_another_systems_backup_is_not_found(client, system, other_system, store):
    theirs = upload(client, other_system, b"secret config")
    response = client.get(f"{URL}/{theirs}", **auth(system))
    assert response.status_code == 404
    assert response.json()["code"] == 404
    response = client.delete(f"{URL}/{theirs}", **auth(system))
    assert response.status_code == 404
    assert ClusterBackup.objects.filter(pk=theirs).exists()
    assert len(store.keys()) == 1


def test_an_unknown_or_malformed_id_is_not_found(client, system):
    assert (
        client.get(f"{URL}/00000000-0000-0000-0000-000000000000", **auth(system)).status_code == 404
    )
    assert (
        client.get(f"{URL}/------------------------------------", **auth(system)).status_code == 404
    )


def test_a_corrupt_object_is_never_served_whole(client, system, store, settings):
    """Same length, one byte changed: the stream fails before its last bytes."""
    settings.CLUSTER_BACKUP_CHUNK_BYTES = 1024
    body = payload(10_000)
    backup_id = upload(client, system, body)
    backup = ClusterBackup.objects.get(pk=backup_id)
    tampered = bytearray(body)
    tampered[5000] ^= 0xFF
    writer = store.writer(backup.storage_key)
    writer.write(bytes(tampered))
    writer.commit()

    response = client.get(f"{URL}/{backup_id}", **auth(system))
    assert response.status_code == 200  # headers go before the bytes are read
    served = bytearray()
    with pytest.raises(BackupCorrupt):
        for chunk in response.streaming_content:
            served += chunk
    assert len(served) < len(body)
    backup.refresh_from_db()
    assert backup.corrupt_at is not None
    # From then on it is refused before any byte.
    again = client.get(f"{URL}/{backup_id}", **auth(system))
    assert again.status_code == 500
    assert "failed an earlier integrity check" in again.json()["message"]


def test_a_truncated_or_missing_object_is_refused_before_any_byte(client, system, store):
    backup_id = upload(client, system, payload(5000))
    backup = ClusterBackup.objects.get(pk=backup_id)
    writer = store.writer(backup.storage_key)
    writer.write(payload(4000))
    writer.commit()
    response = client.get(f"{URL}/{backup_id}", **auth(system))
    assert response.status_code == 500
    assert "4000 bytes stored, 5000 uploaded" in response.json()["message"]

    other = ClusterBackup.objects.get(pk=upload(client, system, b"gone"))
    store.delete(other.storage_key)
    with pytest.raises(BackupCorrupt, match="missing"):
        services.cluster_backup_open(other)


def test_a_system_deletes_its_backup(client, system, store, django_capture_on_commit_callbacks):
    backup_id = upload(client, system, payload(700))
    # The object goes once the row's deletion is committed.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.delete(f"{URL}/{backup_id}", **auth(system))
    assert response.status_code == 200
    assert response.json()["data"] == {"id": backup_id}
    assert not ClusterBackup.objects.exists()
    assert store.keys() == []
    assert Quota.objects.get(organization=system.organization, resource="backup_bytes").usage == 0
    entry = AuditEntry.objects.get(action="cluster_backup.delete")
    assert entry.after == {"deleted_by_system": system.system_key}
    assert entry.organization_id == system.organization_id


def test_other_methods_are_refused_with_405(client, system):
    response = client.put(URL, **auth(system))
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"
