"""Backups fixtures: the blob store on both backends — a local folder, and a real
S3-compatible server (moto in server mode) on a free loopback port for the session."""

import logging
import uuid

import pytest

from backups_app.storage import get_store

S3_BUCKET = "cutover-test"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API on 127.0.0.1 (moto's threaded server), one bucket, for the session."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket=S3_BUCKET)
    yield endpoint
    server.stop()


def _use_s3(settings, endpoint: str) -> None:
    # A prefix per test: each test sees an empty store.
    settings.BACKUP_STORAGE_URL = f"s3://{S3_BUCKET}/t-{uuid.uuid4().hex[:12]}"
    settings.BACKUP_S3_ENDPOINT_URL = endpoint
    settings.BACKUP_S3_ACCESS_KEY_ID = "test"
    settings.BACKUP_S3_SECRET_ACCESS_KEY = "test"
    settings.BACKUP_S3_REGION = "us-east-1"
    # The smallest part S3 accepts, so a few MiB already make a multipart upload.
    settings.BACKUP_S3_PART_BYTES = 5 * 1024 * 1024


@pytest.fixture(autouse=True)
def local_store(settings, tmp_path):
    """Every backups test starts on an empty local folder store."""
    settings.BACKUP_STORAGE_URL = ""
    settings.BACKUP_LOCAL_ROOT = tmp_path / "store"
    settings.BACKUP_WORK_DIR = tmp_path / "work"
    return get_store()


@pytest.fixture(params=["local", "s3"])
def store(request, settings, local_store):
    """The store under test: the local folder, then the S3 server on loopback."""
    if request.param == "s3":
        _use_s3(settings, request.getfixturevalue("s3_server"))
    return get_store()


@pytest.fixture(autouse=True)
def tasks_in_process(celery_eager):
    """Tasks run in-process unless a test asks for the real worker (which overrides this)."""


def pg_database_exists(name: str) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        return cursor.fetchone() is not None


@pytest.fixture
def scratch_database():
    """A database name for a restore target; dropped after the test whatever happened."""
    import psycopg
    from django.db import connection

    name = f"helper_bkp_restore_{uuid.uuid4().hex[:10]}"
    yield name
    params = connection.settings_dict
    with psycopg.connect(
        host=params["HOST"] or "127.0.0.1",
        port=params["PORT"] or 5432,
        user=params["USER"],
        password=params["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def needs_postgresql(db):
    """pg_dump, pg_restore and scratch databases need PostgreSQL, which CI always has; on
    the embedded SQLite default these tests are skipped (and fail under CI)."""
    import os

    from django.db import connection

    if connection.vendor != "postgresql":
        message = "needs DATABASE_URL pointing at PostgreSQL"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
