"""The collect API under saturation: answer 503 with ``Retry-After``, never a 500.

ns8 calls the collect API with ``curl --retry 3``, which retries a 429 or a 503 and
honours ``Retry-After``; a 500 it retries too, but the operator sees an error and the
cluster's log a traceback-shaped failure. So when the box cannot keep up, the collect
API says so in its own envelope:

- **The database refused or went away** (``OperationalError``/``InterfaceError``: too
  many connections, a restart, a failover): nothing was written — a heartbeat's group
  commit answers only after its commit, an inventory's inbox row is one INSERT — so the
  client's retry loses nothing.
- **The request waited too long before a thread took it.** A proxy in front stamps each
  request with ``X-Request-Start: t=<unix ms>`` (docker/Caddyfile does); a collect request
  that waited longer than ``COLLECT_QUEUE_LIMIT_MS`` is refused before any work, so a
  synchronized wave of timers drains at the rate the box can record, and every refusal
  costs next to nothing. Without the header nothing is shed: only a proxy's clock means
  anything here, and a client that forges the header only delays itself.

``Retry-After`` is jittered (``COLLECT_RETRY_AFTER_SECONDS`` to twice that), so the
clients refused together do not come back together.
"""

import random
import time

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

from .collect import envelope

# The system-facing routes: the collect API and registration (controlplane/urls.py).
COLLECT_PREFIXES = ("/collect/api/systems/", "/backend/api/systems/")


def retry_after_seconds() -> int:
    base = settings.COLLECT_RETRY_AFTER_SECONDS
    return base + random.randint(0, base)  # noqa: S311 (spreading retries, not a secret)


def busy_response(message: str) -> HttpResponse:
    seconds = retry_after_seconds()
    return envelope(503, f"{message} Retry in {seconds} seconds.", Retry_After=str(seconds))


def queued_ms(request: HttpRequest, now: float | None = None) -> float | None:
    """Milliseconds since the proxy stamped the request (``t=<unix ms>``), or None."""
    stamp = request.META.get("HTTP_X_REQUEST_START", "")
    stamp = stamp[2:] if stamp.startswith("t=") else stamp
    try:
        started = float(stamp)
    except ValueError:
        return None
    # Some proxies stamp microseconds or seconds: take the unit the magnitude says.
    if started > 1e14:
        started /= 1000
    elif started < 1e11:
        started *= 1000
    return (time.time() if now is None else now) * 1000 - started


class CollectBusyMiddleware:
    """First in the stack: sheds collect requests that queued too long, and turns a
    database that cannot take them into a 503 the client retries."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(COLLECT_PREFIXES):
            limit = settings.COLLECT_QUEUE_LIMIT_MS
            waited = queued_ms(request)
            if limit and waited is not None and waited > limit:
                return busy_response("The service is busy.")
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception):
        if request.path.startswith(COLLECT_PREFIXES) and isinstance(
            exception, OperationalError | InterfaceError
        ):
            return busy_response("The service cannot reach its database just now.")
        return None
