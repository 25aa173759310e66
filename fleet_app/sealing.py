"""Sealed values: encrypted and authenticated (Fernet: AES-CBC + HMAC-SHA256) with a key
derived from ``SECRET_KEY`` and a purpose, and refused once older than a given age.

For a credential that must outlive one request for a few minutes (a secret shown on the
page a redirect leads to) or a file that holds credentials between two steps (an uploaded
mappings export between its plan and its apply): what is written down, in a session row or
on disk, is useless without the server's key, and stops opening when it is too old.
"""

import base64
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.utils.crypto import salted_hmac

# Bytes sealed at a time in a sealed file: each chunk is one token on one line.
FILE_CHUNK_BYTES = 1 << 20


def _fernet(purpose: str) -> Fernet:
    digest = salted_hmac(
        "fleet_app.sealing", purpose, secret=settings.SECRET_KEY, algorithm="sha256"
    )
    return Fernet(base64.urlsafe_b64encode(digest.digest()))


def seal(data: bytes, *, purpose: str) -> str:
    return _fernet(purpose).encrypt(data).decode("ascii")


def unseal(token: str, *, purpose: str, max_age: int | None = None) -> bytes | None:
    """The sealed bytes, or None: tampered with, sealed for another purpose, or too old."""
    try:
        return _fernet(purpose).decrypt(token.encode("ascii"), ttl=max_age)
    except (InvalidToken, UnicodeEncodeError, ValueError):
        return None


def file_seal(source: BinaryIO, target: BinaryIO, *, purpose: str) -> int:
    """Copy ``source`` to ``target`` sealed, a chunk per line; returns the clear size."""
    fernet, size = _fernet(purpose), 0
    while chunk := source.read(FILE_CHUNK_BYTES):
        size += len(chunk)
        target.write(fernet.encrypt(chunk) + b"\n")
    return size


def file_unseal(
    source: Iterable[bytes], *, purpose: str, max_age: int | None = None
) -> Iterator[bytes]:
    """The clear chunks of a sealed file; ``InvalidToken`` if any was tampered with."""
    fernet = _fernet(purpose)
    for line in source:
        if line.strip():
            yield fernet.decrypt(line.strip(), ttl=max_age)
