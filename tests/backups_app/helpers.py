"""Shared helpers of the backups tests."""

import hashlib

from tests.conftest import basic_auth

URL = "/collect/api/systems/backups"


def auth(system) -> dict:
    return {"HTTP_AUTHORIZATION": basic_auth(system.system_key, system.issued_secret)}


def post_backup(client, system, body: bytes, *, filename: str | None = "dump.json.gz.gpg", **extra):
    if filename is not None:
        extra.setdefault("HTTP_X_FILENAME", filename)
    return client.generic(
        "POST", URL, data=body, content_type="application/octet-stream", **auth(system), **extra
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int = 1) -> bytes:
    """Incompressible-looking bytes of a given size, cheap to make."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]
