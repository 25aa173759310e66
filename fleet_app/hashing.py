"""Password hashing that cannot take the CPU the ingest needs.

A staff password check costs about 0.3 s of CPU (PBKDF2, 1.2 million rounds). Left alone,
a few dozen concurrent wrong-password sign-ins fill every core and every web thread, and
heartbeats queue behind them. So every hash the sign-in path computes:

- holds one of ``SIGNIN_HASH_SLOTS`` slots shared by all web processes on the host (an
  exclusive ``flock`` on one of that many files under ``RUN_DIR``; the kernel drops the
  lock of a process that dies, so a slot cannot leak). CPU is a per-host resource, so the
  bound is per host, not per cluster. A sign-in that finds no free slot within
  ``SIGNIN_HASH_WAIT_SECONDS`` is refused without hashing (``SignInBusy``): waiting longer
  would hold a web thread the heartbeat needs;
- runs on a thread of a small pool whose scheduling priority is lowered once, when the
  thread starts, by ``SIGNIN_HASH_NICE``. The request thread waits for it without holding
  the GIL (hashlib's PBKDF2 releases it). Lowering a priority needs no privilege but
  raising it back does, which is why the hash never runs on a web thread itself.

``SIGNIN_HASH_SLOTS = 0`` turns all of this off: hashes run on the request thread, unbounded.
"""

import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from django.conf import settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How often a waiting sign-in looks for a free slot: small next to a hash (~300 ms).
POLL_SECONDS = 0.01


class SignInBusy(Exception):
    """No hashing slot came free in time; the sign-in is refused before any hash."""

    message = "Too many sign-ins at once; try again in a moment."


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
# In-process waiters queue on this instead of polling the slot files: one poller per slot.
_local_slots: threading.BoundedSemaphore | None = None


def _lower_priority() -> None:
    increment = settings.SIGNIN_HASH_NICE
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    # On Linux PRIO_PROCESS with a thread id sets that one thread's nice value.
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError:
        logger.warning("could not lower the priority of the password hashing thread")


def _executor(size: int) -> tuple[ThreadPoolExecutor, threading.BoundedSemaphore]:
    global _pool, _pool_size, _local_slots
    with _pool_lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(
                max_workers=size, thread_name_prefix="password-hash", initializer=_lower_priority
            )
            _pool_size = size
            _local_slots = threading.BoundedSemaphore(size)
        return _pool, _local_slots


def _slot_try(directory: Path, count: int) -> int | None:
    """An open descriptor holding one of the host's slots, or None if all are taken."""
    first = random.randrange(count)  # noqa: S311 - spreads waiters, not a secret
    for offset in range(count):
        path = directory / f"password-hash-{(first + offset) % count}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return fd
    return None


def slots_taken() -> bool:
    """Whether every slot is held right now (a glance: takes none, keeps none)."""
    count = settings.SIGNIN_HASH_SLOTS
    if count <= 0:
        return False
    directory = Path(settings.RUN_DIR)
    if not directory.is_dir():
        return False
    fd = _slot_try(directory, count)
    if fd is None:
        return True
    os.close(fd)
    return False


def bounded(work: Callable[[], T]) -> T:
    """Run the hashing ``work`` within the host's bound, or raise ``SignInBusy``."""
    count = settings.SIGNIN_HASH_SLOTS
    if count <= 0:
        return work()
    pool, local = _executor(count)
    deadline = time.monotonic() + settings.SIGNIN_HASH_WAIT_SECONDS
    if not local.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise SignInBusy
    try:
        directory = Path(settings.RUN_DIR)
        directory.mkdir(parents=True, exist_ok=True)
        while (fd := _slot_try(directory, count)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SignInBusy
            time.sleep(min(POLL_SECONDS, left))
        try:
            return pool.submit(work).result()
        finally:
            os.close(fd)  # closing the descriptor releases the lock
    finally:
        local.release()
