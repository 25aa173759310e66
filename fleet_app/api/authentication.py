"""Staff API token authentication: ``Authorization: Token <token>``, knox's tokens.

knox keeps a SHA-512 digest of each token (its primary key) and the token's first 15
characters (``token_key``). This class differs from ``knox.auth.TokenAuthentication`` in
three ways:

- one indexed lookup: the digest is unsalted, so the row is found by its primary key,
  not by walking every row that shares the 15-character prefix;
- no write on the request path: knox deletes a user's expired tokens while
  authenticating, unaudited; here an expired token is refused and left to
  ``tokens.api_tokens_purge_expired``, which deletes and audits it;
- a token that is not ASCII is an invalid token (401), not a server error.
"""

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from knox.auth import TokenAuthentication
from knox.crypto import hash_token
from knox.models import AuthToken
from rest_framework import exceptions


class ApiTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, token: bytes):
        try:
            text = token.decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        try:
            auth_token = AuthToken.objects.select_related("user").get(digest=hash_token(text))
        except AuthToken.DoesNotExist:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        if auth_token.expiry is not None and auth_token.expiry <= timezone.now():
            raise exceptions.AuthenticationFailed("This API token has expired.")
        return self.validate_user(auth_token)


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """The schema's name for token authentication stays ``tokenAuth`` (what DRF's token
    authentication was called), with the same header and prefix."""

    target_class = ApiTokenAuthentication
    name = "tokenAuth"
    priority = 1

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix=self.target.authenticate_header(None)
        )
