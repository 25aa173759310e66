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
