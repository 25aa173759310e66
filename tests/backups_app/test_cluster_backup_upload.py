"""POST {collect_url}/backups: every status code, on both stores; nothing left on failure."""

import io

import pytest

from backups_app.cluster_backups import services
from backups_app.cluster_backups.models import ClusterBackup
from fleet_app.models import AuditEntry, Quota
from tests.backups_app.helpers import URL, auth, payload, post_backup, sha256
from tests.conftest import basic_auth

pytestmark = pytest.mark.django_db


def assert_nothing_stored(store):
    assert ClusterBackup.objects.count() == 0
    assert store.keys() == []
    assert store.pending() == []


def test_it_stores_a_backup_and_answers_201(client, system, store, settings):
    settings.CLUSTER_BACKUP_CHUNK_BYTES = 256 * 1024
    # Over one S3 part (5 MiB in the tests): a real multipart upload of two parts.
    body = payload(6 * 1024 * 1024 + 123)
    response = post_backup(client, system, body)
    assert response.status_code == 201, response.content
    answer = response.json()
    assert answer["code"] == 201
    data = answer["data"]
    assert set(data) == {"id", "filename", "size", "sha256", "mimetype", "uploaded_at"}
    assert data["filename"] == "dump.json.gz.gpg"
    assert data["size"] == len(body)
    assert data["sha256"] == sha256(body)
    assert data["mimetype"] == "application/octet-stream"
    backup = ClusterBackup.objects.get(pk=data["id"])
    assert backup.system_id == system.pk and backup.organization_id == system.organization_id
    assert store.keys() == [backup.storage_key]
    assert store.pending() == []
    assert b"".join(store.read(backup.storage_key)) == body


def test_it_counts_the_bytes_against_the_organization_quota(client, system):
    body = payload(1000)
    assert post_backup(client, system, body).status_code == 201
    quota = Quota.objects.get(organization=system.organization, resource="backup_bytes")
    assert quota.usage == 1000 and quota.limit is None


def test_it_reads_the_body_in_bounded_chunks(system, settings):
    """The service asks the request for at most one chunk at a time: never the whole body."""
    from backups_app.cluster_backups import services

    settings.CLUSTER_BACKUP_CHUNK_BYTES = 4096
    body = payload(100_000)
    asked, offset = [], 0

    def read(n: int) -> bytes:
        nonlocal offset
        asked.append(n)
        chunk = body[offset : offset + n]
        offset += len(chunk)
        return chunk

    services.cluster_backup_receive(
        system=system,
        upload=services.Upload(
            read=read, content_length=str(len(body)), content_type=None, filename=None
        ),
    )
    assert max(asked) == 4096 and len(asked) == 25


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("my backup (1).tar.gz", "my_backup_1_.tar.gz"),
        ("/", None),
        ("....", None),
        ("ünïcödé.gpg", "unicode.gpg"),
    ],
)
def test_it_cleans_the_file_name(client, system, raw, expected):
    response = post_backup(client, system, b"x" * 10, filename=raw)
    assert response.status_code == 201
    name = response.json()["data"]["filename"]
    if expected is None:
        assert name.startswith("backup-") and name.endswith(".bin")
    else:
        assert name == expected


def test_it_names_the_backup_when_no_file_name_is_sent(client, system):
    response = post_backup(client, system, b"abc", filename=None)
    assert response.json()["data"]["filename"].startswith("backup-")


def test_it_keeps_a_declared_media_type_but_not_a_form_encoding(client, system):
    response = client.generic(
        "POST", URL, data=b"abc", content_type="application/pgp-encrypted", **auth(system)
    )
    assert response.json()["data"]["mimetype"] == "application/pgp-encrypted"
    # curl --data-binary without -H sends this; the bytes are still the file.
    response = client.generic(
        "POST", URL, data=b"abc", content_type="application/x-www-form-urlencoded", **auth(system)
    )
    assert response.status_code == 201
    assert response.json()["data"]["mimetype"] == "application/octet-stream"


def test_it_refuses_wrong_credentials_with_401(client, system, store):
    response = client.generic(
        "POST",
        URL,
        data=b"abc",
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION=basic_auth(system.system_key, "my_wrong.secret"),
    )
    assert response.status_code == 401
    assert response.json()["code"] == 401
    assert response["WWW-Authenticate"].startswith("Basic")
    assert_nothing_stored(store)


def test_it_refuses_no_credentials_with_401(client, store):
    response = client.generic("POST", URL, data=b"abc", content_type="application/octet-stream")
    assert response.status_code == 401
    assert_nothing_stored(store)


def test_it_requires_content_length_with_411(client, system, store):
    response = post_backup(client, system, b"abc", CONTENT_LENGTH="")
    assert response.status_code == 411
    assert response.json() == {
        "code": 411,
        "message": "Content-Length is required: send the backup as the raw request body.",
        "data": None,
    }
    assert_nothing_stored(store)


@pytest.mark.parametrize(
    ("body", "extra", "message"),
    [
        (b"", {"CONTENT_LENGTH": "0"}, "The backup is empty."),
        (b"abc", {"CONTENT_LENGTH": "3 bytes"}, "Content-Length must be a whole number"),
        (b"abc", {"CONTENT_TYPE": "multipart/form-data; boundary=x"}, "not as a form"),
    ],
)
def test_it_refuses_a_bad_request_with_400(client, system, store, body, extra, message):
    response = post_backup(client, system, body, **extra)
    assert response.status_code == 400
    assert message in response.json()["message"]
    assert_nothing_stored(store)


def test_a_short_body_leaves_no_row_and_no_object(client, system, store):
    """Content-Length promises more than arrives: 400, nothing kept (test client)."""
    # A plain stream that simply runs dry, as a socket closed by the client does.
    body = io.BytesIO(payload(1000))
    response = post_backup(client, system, b"x", CONTENT_LENGTH="2000", **{"wsgi.input": body})
    assert response.status_code == 400
    assert "ended after 1000 of 2000 bytes" in response.json()["message"]
    assert_nothing_stored(store)


def test_it_refuses_a_backup_over_the_size_cap_with_413(client, system, store, settings):
    settings.CLUSTER_BACKUP_MAX_BYTES = 1000
    response = post_backup(client, system, payload(1001))
    assert response.status_code == 413
    assert "1000-byte limit" in response.json()["message"]
    assert_nothing_stored(store)
    assert post_backup(client, system, payload(1000)).status_code == 201


def test_it_refuses_a_backup_over_the_organization_quota_with_413(client, system, store):
    Quota.objects.create(organization=system.organization, resource="backup_bytes", limit=1500)
    assert post_backup(client, system, payload(1000)).status_code == 201
    response = post_backup(client, system, payload(501))
    assert response.status_code == 413
    assert "quota is full: 1000 of 1500 bytes used" in response.json()["message"]
    assert ClusterBackup.objects.count() == 1
    assert len(store.keys()) == 1 and store.pending() == []
    assert post_backup(client, system, payload(500)).status_code == 201


def test_the_quota_is_checked_again_when_the_row_is_written(system, store):
    """Two uploads racing for the last bytes: the second finds the quota full at commit
    (its bytes already streamed) and leaves no row and no object."""
    from backups_app.cluster_backups import services

    quota = Quota.objects.create(
        organization=system.organization, resource="backup_bytes", limit=1000
    )
    body = payload(600)

    def read_then_race(n, state={"offset": 0}):  # noqa: B006 - per-call state on purpose
        if state["offset"] == 0:
            # Another upload of the organization commits while this one streams.
            Quota.objects.filter(pk=quota.pk).update(usage=600)
        chunk = body[state["offset"] : state["offset"] + n]
        state["offset"] += len(chunk)
        return chunk

    with pytest.raises(services.PayloadTooLarge):
        services.cluster_backup_receive(
            system=system,
            upload=services.Upload(
                read=read_then_race, content_length="600", content_type=None, filename=None
            ),
        )
    assert_nothing_stored(store)


def test_it_rate_limits_a_system_with_429_and_retry_after(client, system, other_system, settings):
    settings.CLUSTER_BACKUP_RATE_COUNT = 2
    settings.CLUSTER_BACKUP_RATE_WINDOW_SECONDS = 600
    assert post_backup(client, system, b"a").status_code == 201
    assert post_backup(client, system, b"b").status_code == 201
    response = post_backup(client, system, b"c")
    assert response.status_code == 429
    assert response.json()["code"] == 429
    assert 1 <= int(response["Retry-After"]) <= 600
    assert ClusterBackup.objects.filter(system=system).count() == 2
    # Another system has its own allowance.
    assert post_backup(client, other_system, b"d").status_code == 201


def test_an_unregistered_or_suspended_system_cannot_upload(client, customer, store):
    from fleet_app import services as fleet
    from tests.factories import make_system

    suspended = make_system(customer, name="suspended")
    fleet.system_suspend(actor=None, system=suspended)
    assert post_backup(client, suspended, b"abc").status_code == 403
    assert_nothing_stored(store)


def test_the_upload_path_runs_a_bounded_number_of_queries(
    client, system, django_assert_num_queries
):
    post_backup(client, system, b"warm")  # the quota row exists from now on
    # auth (1); quota read before the body (1); commit: savepoint, the quota's conditional
    # UPDATE (takes its lock), the row's INSERT, release (4). Retention is a task.
    with django_assert_num_queries(6):
        assert post_backup(client, system, b"abc").status_code == 201


def test_it_answers_503_with_retry_after_when_every_upload_slot_is_taken(
    client, system, store, settings
):
    """A saturated process refuses at once rather than keep the client waiting; the body
    is read and dropped, nothing is stored, and a slot coming free takes the next one."""
    from backups_app.cluster_backups import throttle

    settings.CLUSTER_BACKUP_UPLOAD_SLOTS = 1
    settings.CLUSTER_BACKUP_BUSY_RETRY_SECONDS = 7
    release = throttle.upload_slot_take()  # another upload of this process streams
    assert release is not None
    body = io.BytesIO(payload(100_000))
    response = post_backup(client, system, b"x", CONTENT_LENGTH="100000", **{"wsgi.input": body})
    assert response.status_code == 503
    assert response.json()["message"] == (
        "The server is busy storing other backups; try again later."
    )
    assert 7 <= int(response["Retry-After"]) <= 14
    assert body.tell() == 100_000
    assert_nothing_stored(store)
    release()
    assert post_backup(client, system, payload(1000)).status_code == 201


def test_nothing_is_audited_for_an_upload_but_a_prune_is(client, system, settings):
    settings.CLUSTER_BACKUP_KEEP_COUNT = 1
    post_backup(client, system, b"one")
    assert not AuditEntry.objects.filter(action__startswith="cluster_backup").exists()
    post_backup(client, system, b"two")
    services.cluster_backups_prune_recent()
    entry = AuditEntry.objects.get(action="cluster_backup.prune")
    assert entry.actor is None and entry.before["size"] == 3


def test_a_storage_failure_mid_upload_answers_503_and_leaves_nothing(
    client, system, store, monkeypatch, settings
):
    settings.CLUSTER_BACKUP_CHUNK_BYTES = 1024
    probe = store.writer("probe")
    probe.abort()
    writer_class = type(probe)
    calls = {"n": 0}
    original = writer_class.write

    def failing_write(self, chunk):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        original(self, chunk)

    monkeypatch.setattr(writer_class, "write", failing_write)
    response = post_backup(client, system, payload(10_000))
    assert response.status_code == 503
    assert "No space left on device" in response.json()["message"]
    assert_nothing_stored(store)


def test_an_unreachable_bucket_answers_503(client, system, settings):
    from tests.backups_app.conftest import _use_s3

    _use_s3(settings, "http://127.0.0.1:9")  # nothing listens on the discard port
    settings.BACKUP_STORAGE_URL = "s3://cutover-test/unreachable"
    response = post_backup(client, system, b"abc")
    assert response.status_code == 503
    assert ClusterBackup.objects.count() == 0


class _DatabaseDropsMidUpload(io.BytesIO):
    """A request body whose first read has the server end the request's database session,
    as a restart or a failover does while the bytes stream."""

    def read(self, size=-1):
        if self.tell() == 0:
            import psycopg
            from django.db import connection

            pid = connection.connection.info.backend_pid
            params = connection.settings_dict
            with psycopg.connect(
                host=params["HOST"] or "127.0.0.1",
                port=params["PORT"] or 5432,
                user=params["USER"],
                dbname="postgres",
                autocommit=True,
            ) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        return super().read(size)


@pytest.mark.django_db(transaction=True)
def test_a_database_dropped_mid_upload_answers_503_and_leaves_nothing(
    client, system, local_store, needs_postgresql
):
    from django.db import connection

    body = _DatabaseDropsMidUpload(payload(10_000))
    response = post_backup(client, system, b"x", CONTENT_LENGTH="10000", **{"wsgi.input": body})
    assert response.status_code == 503
    assert "cannot reach its database" in response.json()["message"]
    assert 10 <= int(response["Retry-After"]) <= 20
    connection.close()  # the session the server ended; the next query opens a new one
    assert_nothing_stored(local_store)
    assert post_backup(client, system, payload(1000)).status_code == 201
