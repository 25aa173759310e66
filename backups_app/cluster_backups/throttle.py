"""Per-system upload rate: at most N uploads per fixed window, counted in the shared cache.

A fixed window (the current multiple of the window length) gives an exact Retry-After:
the seconds left until the next window. A cache outage must not stop nightly backups of
the whole fleet, so cache errors fail open and are logged.
"""

import logging
import time

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
