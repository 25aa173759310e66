"""The client's address, as far as this deployment can know it.

Every throttle and lockout keys on it, so it must not be something the client can pick.
``REMOTE_ADDR`` is the peer of the TCP connection: with no proxy in front it is the client.
Behind ``TRUSTED_PROXY_COUNT`` proxies, each appends to X-Forwarded-For the address it
received the request from, so the Nth entry from the right is the one the outermost trusted
proxy saw; anything left of it was written by the client and is ignored.
"""

import ipaddress

from django.conf import settings
from django.http import HttpRequest

UNKNOWN = "unknown"


def _normalized(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # An IPv4 client reaching a dual-stack socket shows up as ::ffff:a.b.c.d; one client,
    # one bucket.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def client_address(request: HttpRequest) -> str:
    """The client's IP address in canonical form, or ``"unknown"``."""
    remote = _normalized(request.META.get("REMOTE_ADDR") or "")
    trusted = settings.TRUSTED_PROXY_COUNT
    if trusted > 0:
        # Repeated headers reach WSGI joined with commas: one list either way.
        entries = (request.META.get("HTTP_X_FORWARDED_FOR") or "").split(",")
        if len(entries) >= trusted and (forwarded := _normalized(entries[-trusted])):
            return forwarded
        # Fewer entries than proxies (a request that skipped one) or a malformed entry
        # where a trusted proxy should have written: the entries further left are the
        # client's own, so fall back to the peer.
    return remote or UNKNOWN


def client_ip(request: HttpRequest) -> str | None:
    """``client_address``, or None when there is no usable address (a stored IP field)."""
    address = client_address(request)
    return None if address == UNKNOWN else address
