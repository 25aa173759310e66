"""The instance's signing key, the trusted keys, and the credential digest key's fingerprint.

The signing key is an Ed25519 private key in a file (``BUNDLE_SIGNING_KEY_FILE``), made on
first use; a key is known by its id, the first 16 hex digits of the sha256 of its raw
public half. The digest key never travels: a bundle carries only an HMAC of a fixed label
under it, so two instances can tell whether they share it.
"""

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

from .models import TrustedBundleKey


class KeyError_(ValueError):
    """A key file or public key that cannot be used."""


def digest_key_fingerprint() -> str:
    key = settings.CREDENTIAL_DIGEST_KEY.encode()
    return hmac.new(key, b"cutover/digest-key-id/v1", hashlib.sha256).hexdigest()[:16]


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signing_key() -> Ed25519PrivateKey:
    """The instance's private key, made (mode 0600) the first time it is needed."""
    path = Path(settings.BUNDLE_SIGNING_KEY_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        return private
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyError_(f"{path} does not hold an Ed25519 private key.")
    return loaded


def public_hex() -> str:
    return _raw(signing_key().public_key()).hex()


def own_key_id() -> str:
    return key_id(_raw(signing_key().public_key()))


def sign(data: bytes) -> tuple[str, str]:
    """(key id, hex signature) of ``data`` under the instance's key."""
    private = signing_key()
    return key_id(_raw(private.public_key())), private.sign(data).hex()


def parse_public(text: str) -> bytes:
    """A public key given as 64 hex digits (what ``bundle_keys --public`` prints)."""
    value = text.strip().split()[0] if text.strip() else ""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeyError_("A public key is 64 hex digits (what bundle_keys --public prints).")
    return raw


def verify(*, signer: str, signature: str, data: bytes) -> bool:
    """Is ``signature`` a signature of ``data`` by the trusted key ``signer``?"""
    row = TrustedBundleKey.objects.filter(key_id=signer).first()
    if row is None:
        return False
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(row.public_key))
        public.verify(bytes.fromhex(signature), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def is_trusted(signer: str) -> bool:
    return TrustedBundleKey.objects.filter(key_id=signer).exists()
