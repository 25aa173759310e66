"""Throttling of failed legacy logins, so that guessing costs the guesser, not the owner.

Three counters per failure, in the shared cache (Redis in production) for a fixed window:
the client address, the legacy id, and the (legacy id, address) pair. Before the
credentials are checked:

- an address with too many failures is refused whatever it presents;
- a legacy id with too many failures is refused only to addresses that have themselves
  failed for that id (their pair counter is not zero).

A refusal says how long it lasts (``Retry-After``): the time left until the counters that
refuse the caller expire, from the end of each window, recorded when the window starts.

So a correct credential from an address that has not failed always goes through: a
guesser can lock out the addresses it guesses from, never the system's own. A guesser
spread over many addresses gets one try per address per id once the id is over the limit.

A cache outage must not lock the whole legacy fleet out during its upgrade window, so
errors fail open and are logged.
"""

import hashlib
import ipaddress
import logging
import math
import time

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)


def _bucket(address: str) -> str:
    # One IPv6 host usually holds a whole /64: counting single addresses there would give
    # it 2**64 fresh buckets.
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def _keys(legacy_system_id: str, address: str) -> tuple[str, str, str]:
    # Hash the id: cache keys must not carry client-supplied text verbatim.
    lid = hashlib.sha256(legacy_system_id.encode()).hexdigest()[:32]
    bucket = _bucket(address)
    return f"proxy-fail:addr:{bucket}", f"proxy-fail:id:{lid}", f"proxy-fail:pair:{lid}:{bucket}"


def _clock() -> float:
    return time.time()


def _until(key: str) -> str:
    # When the window of a counter ends (a Unix time), written when the window starts.
    return f"{key}:until"


def throttled(*, legacy_system_id: str, address: str) -> int:
    """Seconds this address must wait before presenting credentials for this id, else 0:
    the time left until every counter that refuses it has expired (``Retry-After``)."""
    by_address, by_id, by_pair = _keys(legacy_system_id, address)
    keys = [by_address, by_id, by_pair]
    try:
        counts = cache.get_many(keys + [_until(key) for key in keys])
    except Exception:
        logger.warning("throttle cache unavailable; not throttling", exc_info=True)
        return 0
    limit = settings.PROXY_THROTTLE_FAILURES
    window = settings.PROXY_THROTTLE_WINDOW_SECONDS
    now = _clock()

    def left(key: str) -> float:
        # A counter written before its end was recorded: a whole window is always enough.
        until = counts.get(_until(key))
        return until - now if isinstance(until, int | float) else window

    waits = []
    if counts.get(by_address, 0) >= limit:
        waits.append(left(by_address))
    if counts.get(by_pair, 0) > 0 and counts.get(by_id, 0) >= limit:
        # Refused while both hold: until the first of them expires.
        waits.append(min(left(by_pair), left(by_id)))
    if not waits:
        return 0
    return min(max(1, math.ceil(max(waits))), window)


def record_failure(*, legacy_system_id: str, address: str) -> None:
    window = settings.PROXY_THROTTLE_WINDOW_SECONDS
    try:
        for key in _keys(legacy_system_id, address):
            # add() starts the window; incr() keeps its expiry.
            if cache.add(key, 1, timeout=window):
                cache.set(_until(key), _clock() + window, timeout=window)
            else:
                cache.incr(key)
    except Exception:
        logger.warning("throttle cache unavailable; failure not counted", exc_info=True)
