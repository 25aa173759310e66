"""The staff API's OpenAPI generation: every operation also documents the errors it answers.

drf-spectacular documents only the success of an operation. The staff API answers its
errors in DRF's shapes, and the schema says which ones each operation can give:

- 400 when the caller sends something the operation reads (query parameters, a body):
  an object naming each field that was wrong with one sentence about it;
- 401 when the caller sends no credentials, or a token that is unknown, expired or
  revoked (token authentication comes first, so the answer says
  ``WWW-Authenticate: Token``);
- 403 when the caller is not a staff account with the right role, or sends a session
  request without its CSRF token;
- 404 for a route with an id in its path (no such row, or one outside the caller's
  organization) and for a list whose pagination cursor is not one it handed out;
- 415 for a body in a type the operation does not take.

An optional query parameter may be given blank: it then means "not given".

Errors other than 400 are ``{"detail": "<one sentence>"}``.
"""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny

ERROR = inline_serializer(
    name="Error",
    fields={"detail": serializers.CharField(help_text="What was wrong, in one sentence.")},
)

VALIDATION_ERROR = {
    "type": "object",
    "description": "Each field that was wrong, with one sentence about it.",
    "additionalProperties": {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}},
            {"type": "object"},
        ]
    },
}


class AutoSchema(SpectacularAutoSchema):
    def _get_parameters(self):
        parameters = super()._get_parameters()
        for parameter in parameters:
            # A blank filter, cursor or page size means "not given" (django-filter's and
            # DRF's reading of a query string, and what an HTML form sends).
            if parameter.get("in") == "query" and not parameter.get("required"):
                parameter["allowEmptyValue"] = True
        return parameters

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code, response in self._error_responses().items():
            responses.setdefault(
                code, self._get_response_for_code(response, code, direction=direction)
            )
        return responses

    def _error_responses(self) -> dict[str, OpenApiResponse]:
        parameters = self._get_parameters()
        query = [p for p in parameters if p.get("in") == "query"]
        in_path = any(p.get("in") == "path" for p in parameters)
        reads_body = self.method in ("POST", "PUT", "PATCH")
        errors: dict[str, OpenApiResponse] = {}
        if query or reads_body:
            errors["400"] = OpenApiResponse(VALIDATION_ERROR, description="Invalid input.")
        if not self._allows_anyone():
            errors["401"] = OpenApiResponse(
                ERROR, description="No credentials, or an unknown, expired or revoked token."
            )
            errors["403"] = OpenApiResponse(
                ERROR, description="Signed in without the role this operation needs."
            )
        if in_path or any(p["name"] == "cursor" for p in query):
            errors["404"] = OpenApiResponse(
                ERROR, description="No such object visible to the caller, or an unknown cursor."
            )
        if reads_body:
            errors["415"] = OpenApiResponse(ERROR, description="Unsupported body type.")
        return errors

    def _allows_anyone(self) -> bool:
        return all(isinstance(p, AllowAny) for p in self.view.get_permissions())
