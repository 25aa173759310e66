"""Throttling of failed legacy logins, per legacy id and per client address.

Counts live in the shared cache (Redis in production) for a fixed window. A cache outage
must not lock the whole legacy fleet out during its upgrade window, so errors fail open
and are logged.
"""

import hashlib
import logging

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)


def _keys(legacy_system_id: str, address: str) -> list[str]:
    # Hash the id: cache keys must not carry client-supplied text verbatim.
    lid = hashlib.sha256(legacy_system_id.encode()).hexdigest()[:32]
    return [f"proxy-fail:id:{lid}", f"proxy-fail:addr:{address}"]


def throttled(*, legacy_system_id: str, address: str) -> int:
    """Seconds to wait if either counter is over the limit, else 0."""
    try:
        counts = cache.get_many(_keys(legacy_system_id, address))
    except Exception:
        logger.warning("throttle cache unavailable; not throttling", exc_info=True)
        return 0
    if any(count >= settings.PROXY_THROTTLE_FAILURES for count in counts.values()):
        return settings.PROXY_THROTTLE_WINDOW_SECONDS
    return 0


def record_failure(*, legacy_system_id: str, address: str) -> None:
    window = settings.PROXY_THROTTLE_WINDOW_SECONDS
    try:
        for key in _keys(legacy_system_id, address):
            # add() starts the window; incr() keeps its expiry.
            if not cache.add(key, 1, timeout=window):
                cache.incr(key)
    except Exception:
        logger.warning("throttle cache unavailable; failure not counted", exc_info=True)
