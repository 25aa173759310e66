"""The legacy-facing endpoints the ns8 ``migrate-to-my`` and unregister scripts call.

``GET /proxy/credentials`` with HTTP Basic ``legacy_system_id:legacy_token`` answers the
native credentials in the collect envelope; ``POST /api/Utils/freekey`` with the form
fields ``lk`` and ``secret`` releases the legacy slot.
"""

from django.core.exceptions import BadRequest, SuspiciousOperation
from django.http import HttpRequest, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt

from fleet_app.api.collect import basic_credentials, envelope, error_response
from fleet_app.client_address import client_address
from fleet_app.errors import FleetError, InvalidInput, NotAuthenticated

from .. import services


def _only(request: HttpRequest, method: str) -> JsonResponse | None:
    if request.method == method:
        return None
    response = envelope(405, f"Use {method} on this endpoint.")
    response["Allow"] = method
    return response


@csrf_exempt
def credentials(request: HttpRequest) -> JsonResponse:
    if refused := _only(request, "GET"):
        return refused
    try:
        try:
            legacy_id, token = basic_credentials(request)
        except NotAuthenticated:
            raise NotAuthenticated(
                "HTTP Basic legacy_system_id:legacy_token is required."
            ) from None
        rotation = services.mapping_rotate(
            legacy_system_id=legacy_id, legacy_token=token, address=client_address(request)
        )
    except FleetError as error:
        return error_response(error)
    response = envelope(
        200,
        "native credentials issued",
        {
            "system_key": rotation.system_key,
            "system_secret": rotation.system_secret,
            "collect_url": rotation.collect_url,
        },
    )
    # The body carries a secret: no cache anywhere may keep it.
    response["Cache-Control"] = "no-store"
    return response


@csrf_exempt
def freekey(request: HttpRequest) -> JsonResponse:
    if refused := _only(request, "POST"):
        return refused
    try:
        try:
            form = request.POST
        except (MultiPartParserError, SuspiciousOperation, BadRequest):
            # A broken multipart body, too many fields, too large: Django would answer
            # its own HTML 400.
            raise InvalidInput("The body must be a form with the fields lk and secret.") from None
        legacy_id = (form.get("lk") or "").strip()
        token = form.get("secret") or ""
        if not legacy_id or not token:
            raise InvalidInput("Form fields lk and secret are required.")
        mapping = services.mapping_release(
            legacy_system_id=legacy_id, legacy_token=token, address=client_address(request)
        )
    except FleetError as error:
        return error_response(error)
    return envelope(
        200,
        "legacy slot released",
        {"lk": mapping.legacy_system_id, "released_at": mapping.released_at},
    )
