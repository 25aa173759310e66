"""The system-facing collect API, wire-compatible with what ns8 clusters send.

Clients are shell scripts using curl: a heartbeat is a POST with an empty body and no
Content-Type, responses are read with ``jq '.data.<field>'``. These are plain Django
views (no DRF, no CSRF, no content negotiation): the heartbeat is the busiest code in
the product and is kept to one indexed lookup, one UPDATE and a tiny response.
"""

import json
import logging
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .. import credentials, services
from ..errors import (
    FleetError,
    InvalidInput,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
)
from ..models import System

logger = logging.getLogger(__name__)


def envelope(status: int, message: str, data=None, **headers: str) -> JsonResponse:
    """The collect envelope: ``{"code", "message", "data"}`` with a matching status."""
    response = JsonResponse({"code": status, "message": message, "data": data}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def error_response(error: FleetError) -> JsonResponse:
    if error.status == 401:
        return envelope(401, error.message, WWW_Authenticate='Basic realm="collect"')
    if isinstance(error, TooManyRequests | ServiceUnavailable):
        return envelope(error.status, error.message, Retry_After=str(error.retry_after))
    return envelope(error.status, error.message)


def basic_credentials(request: HttpRequest) -> tuple[str, str]:
    """The request's Basic ``(key, secret)``; the legacy proxy reads its pair the same way."""
    return credentials.basic_parse(request.META.get("HTTP_AUTHORIZATION"))


def method_not_allowed(*methods: str) -> JsonResponse:
    response = envelope(405, f"Use {' or '.join(methods)} on this endpoint.")
    response["Allow"] = ", ".join(methods)
    return response


def collect_endpoint(*methods: str, lenient: bool = False) -> Callable:
    """Authenticate the system, allow only ``methods``, turn domain errors into envelopes
    (a database that refuses or drops the request becomes a 503 in busy.py).

    ``lenient``: a suspended or unregistered system with valid credentials is let through
    (``/info`` tells it what it is)."""

    def decorate(view: Callable) -> Callable:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            if request.method not in methods:
                return method_not_allowed(*methods)
            try:
                key, secret = basic_credentials(request)
                system = services.system_authenticate(
                    system_key=key, system_secret=secret, lenient=lenient
                )
                return view(request, system, *args, **kwargs)
            except FleetError as error:
                return error_response(error)

        return wrapper

    return decorate


@csrf_exempt
def heartbeat(request: HttpRequest) -> JsonResponse:
    """The busiest endpoint: a known system's heartbeat is one guarded UPDATE (hot.py)."""
    if request.method != "POST":
        return method_not_allowed("POST")
    try:
        beat = services.system_heartbeat(authorization=request.META.get("HTTP_AUTHORIZATION"))
    except FleetError as error:
        return error_response(error)
    return envelope(
        200,
        "heartbeat acknowledged",
        {"system_key": beat.system_key, "acknowledged": True, "last_heartbeat": beat.at},
    )


def _read_capped_body(request: HttpRequest, cap: int) -> bytes:
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"The inventory is larger than the {cap}-byte limit.")
    # Read one byte past the cap so a body without Content-Length is capped too.
    body = request.read(cap + 1)
    if len(body) > cap:
        raise PayloadTooLarge(f"The inventory is larger than the {cap}-byte limit.")
    return body


@csrf_exempt
def inventory(request: HttpRequest) -> JsonResponse:
    """Accepted, not yet recorded: the body is checked and stored in the inbox (202); the
    drain records it (services.inventory_inbox_drain). Authenticated as every collect
    endpoint is, with the heartbeat's memory of systems (services.inventory_accept_from)."""
    if request.method != "POST":
        return method_not_allowed("POST")
    try:
        key, secret = basic_credentials(request)
        accepted = services.inventory_accept_from(
            system_key=key,
            system_secret=secret,
            body=lambda: _read_capped_body(request, settings.COLLECT_INVENTORY_MAX_BYTES),
        )
    except FleetError as error:
        return error_response(error)
    return envelope(
        202,
        "inventory received",
        {
            "system_key": key,
            "inbox_id": accepted.pk,
            "digest": accepted.digest,
            "received_at": accepted.received_at,
        },
    )


@collect_endpoint("GET", lenient=True)
def info(request: HttpRequest, system: System) -> JsonResponse:
    """What ns8's get-subscription reads: ``data.system_id`` (the system key, the end of the
    portal link it shows), ``data.registered``, ``data.suspended`` (shown as "inactive")
    and ``data.organization.name``. A suspended or unregistered system is answered 200 with
    what it is; a deleted one, wrong credentials and other errors are refused."""
    organization = system.organization
    return envelope(
        200,
        "system info",
        {
            "system_id": system.system_key,
            "system_key": system.system_key,
            "name": system.name,
            "ui_name": system.ui_name,
            "type": system.type,
            "status": system.status,
            "registered": system.registered_at is not None,
            "registered_at": system.registered_at,
            "suspended": system.suspended_at is not None,
            "suspended_at": system.suspended_at,
            "last_heartbeat": system.last_heartbeat_at,
            "last_inventory": system.last_inventory_at,
            "organization": {"name": organization.name, "kind": organization.kind},
            "system_url": services.system_page_url(system),
        },
    )


@csrf_exempt
def register(request: HttpRequest) -> JsonResponse:
    """``POST /backend/api/systems/register`` with ``{"system_secret": "…"}``, no auth."""
    if request.method != "POST":
        return method_not_allowed("POST")
    try:
        try:
            payload = json.loads(request.read(64 * 1024) or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidInput('The body must be JSON: {"system_secret": "…"}.') from None
        if not isinstance(payload, dict):
            raise InvalidInput('The body must be JSON: {"system_secret": "…"}.')
        system = services.system_register(system_secret=payload.get("system_secret"))
    except FleetError as error:
        return error_response(error)
    return envelope(
        200,
        "system registered",
        {
            "system_key": system.system_key,
            "collect_url": services.collect_url(),
            "registered_at": system.registered_at,
        },
    )
