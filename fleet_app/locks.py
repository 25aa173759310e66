"""A named lock so two copies of a command or job cannot run at once.

On PostgreSQL it is a session advisory lock (held by the database, released if the
process dies); on the embedded SQLite default, an exclusive lock on a file.
"""

import fcntl
import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.db import connection


class LockHeld(Exception):
    """Another holder has the lock."""


def _lock_id(name: str) -> int:
    # A signed 64-bit key derived from the name, as pg_try_advisory_lock takes it.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def named_lock(name: str) -> Iterator[None]:
    """Hold the lock ``name`` for the block, or raise ``LockHeld`` at once."""
    if connection.vendor == "postgresql":
        key = _lock_id(name)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            if not cursor.fetchone()[0]:
                raise LockHeld(name)
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
        return
    path = (
        Path(tempfile.gettempdir())
        / f"cutover-{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock"
    )
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(name) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
