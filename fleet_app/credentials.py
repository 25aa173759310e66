"""Machine credentials: generation, keyed digests and constant-time verification.

A system secret looks like ``my_<public>.<secret>``. The public part is stored in clear
and indexed, so finding the system a secret belongs to is one indexed lookup; the whole
secret is stored only as an HMAC-SHA256 digest under ``CREDENTIAL_DIGEST_KEY``. Machine
secrets are random and high-entropy, so a slow password hash would add nothing but
latency to the ingest path.
"""

import base64
import hashlib
import hmac
import secrets

from django.conf import settings

from .errors import NotAuthenticated

SECRET_PREFIX = "my_"  # noqa: S105 - a format prefix, not a secret


def digest(value: str) -> str:
    """Keyed digest of a credential (hex HMAC-SHA256)."""
    key = settings.CREDENTIAL_DIGEST_KEY.encode()
    # surrogatepass: a malformed secret (lone surrogates from JSON) is digested like any
    # other, against the dummy; every real secret is ASCII, whose bytes this leaves alone.
    return hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


# What a credential is compared against when nothing is stored for it (an unknown system
# key): a fixed value of a digest's length, which no HMAC-SHA256 output is expected to be.
DUMMY_DIGEST = "0" * 64


def verify(value: str, stored_digest: str | None) -> bool:
    """Constant-time comparison of a presented credential with a stored digest.

    ``None`` (no such system) does the same work against ``DUMMY_DIGEST`` and is never
    valid: an unknown key costs the HMAC a known key with a wrong secret costs, so the
    time to answer does not tell which keys exist."""
    if stored_digest is None:
        hmac.compare_digest(digest(value), DUMMY_DIGEST)
        return False
    return hmac.compare_digest(digest(value), stored_digest)


def system_key_generate() -> str:
    """Public system key: ``NETH-`` and eight groups of four upper-case hex digits."""
    raw = secrets.token_hex(16).upper()
    return "NETH-" + "-".join(raw[i : i + 4] for i in range(0, 32, 4))


def system_secret_generate() -> tuple[str, str]:
    """Return ``(public_part, full_secret)`` for a new system secret."""
    public = secrets.token_hex(10)
    return public, f"{SECRET_PREFIX}{public}.{secrets.token_urlsafe(32)}"


def system_secret_public_part(secret: str) -> str | None:
    """The lookup part of a ``my_<public>.<secret>`` secret, or None if malformed.

    Secrets are ASCII without NUL: anything else is malformed (and could not be a query
    parameter on PostgreSQL, nor digested)."""
    if not secret.startswith(SECRET_PREFIX) or not secret.isascii() or "\x00" in secret:
        return None
    public, sep, rest = secret[len(SECRET_PREFIX) :].partition(".")
    if not sep or not public or not rest or len(public) > 32:
        return None
    return public


def basic_parse(authorization: str | None) -> tuple[str, str]:
    """The ``(key, secret)`` of an HTTP Basic ``Authorization`` header.

    Anything else is a ``NotAuthenticated`` with one sentence: the header is whatever
    anyone on the network sends, and must never become a 500 further down."""
    scheme, _, encoded = (authorization or "").partition(" ")
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
