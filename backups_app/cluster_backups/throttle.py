"""Upload admission: a per-system rate, and a per-process bound on uploads at once.

Rate: at most N uploads per fixed window, counted in the shared cache. A fixed window
(the current multiple of the window length) gives an exact Retry-After: the seconds left
until the next window. A cache outage must not stop nightly backups of the whole fleet,
so cache errors fail open and are logged.

Slots: at most ``CLUSTER_BACKUP_UPLOAD_SLOTS`` uploads stream and commit at once in one
web process. An upload that finds none free is refused at once (503 with Retry-After)
instead of waiting: the web threads left over then answer the connections queued in
front of them within milliseconds, so a saturated server sheds what it cannot store
instead of letting every client wait until it times out (when the server may already
have stored what the client gives up on).
"""

import logging
import random
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)


def upload_allow(*, system_key: str) -> int:
    """Count one upload attempt; 0 if allowed, else the seconds until the next window."""
    window = settings.CLUSTER_BACKUP_RATE_WINDOW_SECONDS
    limit = settings.CLUSTER_BACKUP_RATE_COUNT
    now = time.time()
    bucket = int(now // window)
    key = f"cluster-backup-rate:{system_key}:{bucket}"
    try:
        # add() starts the window; incr() keeps its expiry.
        count = 1 if cache.add(key, 1, timeout=window + 5) else cache.incr(key)
    except Exception:
        logger.warning("rate-limit cache unavailable; upload not throttled", exc_info=True)
        return 0
    if count > limit:
        return max(1, int((bucket + 1) * window - now + 0.999))
    return 0


_slots_lock = threading.Lock()
_slots: tuple[int, threading.BoundedSemaphore] | None = None


def upload_slot_take() -> Callable[[], None] | None:
    """One of this process's upload slots (call the result to give it back), or None if
    every slot is taken. ``CLUSTER_BACKUP_UPLOAD_SLOTS`` 0: unbounded."""
    global _slots
    count = settings.CLUSTER_BACKUP_UPLOAD_SLOTS
    if count <= 0:
        return _nothing
    if _slots is None or _slots[0] != count:
        with _slots_lock:
            if _slots is None or _slots[0] != count:
                _slots = (count, threading.BoundedSemaphore(count))
    semaphore = _slots[1]
    return semaphore.release if semaphore.acquire(blocking=False) else None


def _nothing() -> None:
    return None


def busy_retry_after() -> int:
    """Seconds a refused upload is told to wait: spread over [N, 2N] so that the clients
    refused together do not all come back in the same second."""
    base = settings.CLUSTER_BACKUP_BUSY_RETRY_SECONDS
    return random.randint(base, 2 * base)  # noqa: S311 - spreading retries, not a secret
