"""The system-facing collect API, wire-compatible with what ns8 clusters send.

Clients are shell scripts using curl: a heartbeat is a POST with an empty body and no
Content-Type, responses are read with ``jq '.data.<field>'``. These are plain Django
views (no DRF, no CSRF, no content negotiation): the heartbeat is the busiest code in
the product and is kept to one indexed lookup, one UPDATE and a tiny response.
"""

import base64
import json
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .. import hot, services
from ..errors import FleetError, InvalidInput, NotAuthenticated, PayloadTooLarge, TooManyRequests
from ..models import System


def envelope(status: int, message: str, data=None, **headers: str) -> JsonResponse:
    """The collect envelope: ``{"code", "message", "data"}`` with a matching status."""
    response = JsonResponse({"code": status, "message": message, "data": data}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def error_response(error: FleetError) -> JsonResponse:
    if error.status == 401:
        return envelope(401, error.message, WWW_Authenticate='Basic realm="collect"')
    if isinstance(error, TooManyRequests):
        return envelope(429, error.message, Retry_After=str(error.retry_after))
    return envelope(error.status, error.message)


def basic_credentials(request: HttpRequest) -> tuple[str, str]:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise NotAuthenticated("HTTP Basic credentials system_key:system_secret are required.")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 once decoded
        raise NotAuthenticated("The Basic credentials are not valid base64 of UTF-8.") from None
    key, sep, secret = decoded.partition(":")
    if not sep or not key or not secret:
        raise NotAuthenticated("HTTP Basic credentials system_key:system_secret are required.")
    if "\x00" in decoded:
        # No key or secret holds one, and PostgreSQL refuses it in a query parameter.
        raise NotAuthenticated("The Basic credentials must not contain NUL characters.")
    return key, secret


def collect_endpoint(*methods: str) -> Callable:
    """Authenticate the system, allow only ``methods``, turn domain errors into envelopes."""

    def decorate(view: Callable) -> Callable:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            if request.method not in methods:
                response = envelope(405, f"Use {' or '.join(methods)} on this endpoint.")
                response["Allow"] = ", ".join(methods)
                return response
            try:
                key, secret = basic_credentials(request)
                system = services.system_authenticate(system_key=key, system_secret=secret)
                return view(request, system, *args, **kwargs)
            except FleetError as error:
                return error_response(error)

        return wrapper

    return decorate


@csrf_exempt
def heartbeat(request: HttpRequest) -> JsonResponse:
    """The busiest endpoint: a known system's heartbeat is one guarded UPDATE (hot.py)."""
    if request.method == "POST":
        try:
            key, secret = basic_credentials(request)
        except FleetError as error:
            return error_response(error)
        at = hot.heartbeat(key, secret)
        if at is not None:
            return _heartbeat_acknowledged(key, at)
    return _heartbeat_full(request)


@collect_endpoint("POST")
def _heartbeat_full(request: HttpRequest, system: System) -> JsonResponse:
    at = services.system_heartbeat(system=system)
    hot.remember(system)
    return _heartbeat_acknowledged(system.system_key, at)


def _heartbeat_acknowledged(system_key: str, at) -> JsonResponse:
    return envelope(
        200,
        "heartbeat acknowledged",
        {"system_key": system_key, "acknowledged": True, "last_heartbeat": at},
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


@collect_endpoint("POST")
def inventory(request: HttpRequest, system: System) -> JsonResponse:
    body = _read_capped_body(request, settings.COLLECT_INVENTORY_MAX_BYTES)
    if not body.strip():
        raise InvalidInput("The inventory body is empty.")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("The inventory is not valid JSON.") from None
    except RecursionError:
        raise InvalidInput("The inventory nests too deeply to be read.") from None
    stored = services.inventory_ingest(system=system, payload=payload, size=len(body))
    return envelope(
        202,
        "inventory received",
        {
            "system_key": system.system_key,
            "inventory_id": stored.pk,
            "received_at": stored.received_at,
        },
    )


@collect_endpoint("GET")
def info(request: HttpRequest, system: System) -> JsonResponse:
    organization = system.organization
    return envelope(
        200,
        "system info",
        {
            "system_key": system.system_key,
            "name": system.name,
            "type": system.type,
            "status": system.status,
            "registered": system.registered_at is not None,
            "registered_at": system.registered_at,
            "last_heartbeat": system.last_heartbeat_at,
            "last_inventory": system.last_inventory_at,
            "organization": {"name": organization.name, "kind": organization.kind},
        },
    )


@csrf_exempt
def register(request: HttpRequest) -> JsonResponse:
    """``POST /backend/api/systems/register`` with ``{"system_secret": "…"}``, no auth."""
    if request.method != "POST":
        response = envelope(405, "Use POST on this endpoint.")
        response["Allow"] = "POST"
        return response
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
