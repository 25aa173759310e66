"""System credentials: format, keyed digests, lookup part, audit masking."""

import re
import timeit

from fleet_app import credentials, services
from fleet_app.models import AuditEntry, System


def test_system_keys_have_the_neth_format():
    assert re.fullmatch(r"NETH(-[0-9A-F]{4}){8}", credentials.system_key_generate())


def test_secrets_carry_a_lookup_part():
    public, secret = credentials.system_secret_generate()

    assert secret.startswith(f"my_{public}.")
    assert credentials.system_secret_public_part(secret) == public
    assert credentials.system_secret_public_part("my_nodot") is None
    assert credentials.system_secret_public_part("other") is None


def test_digests_are_keyed(settings):
    settings.CREDENTIAL_DIGEST_KEY = "one"
    first = credentials.digest("secret")
    settings.CREDENTIAL_DIGEST_KEY = "two"

    assert credentials.digest("secret") != first
    assert not credentials.verify("secret", first)


def test_verifying_costs_microseconds_not_a_password_hash():
    stored = credentials.digest("my_abc.def")

    seconds = timeit.timeit(lambda: credentials.verify("my_abc.def", stored), number=1000) / 1000

    assert seconds < 0.001


def test_the_secret_is_stored_only_as_a_digest(customer):
    issued = services.system_create(actor=None, organization=customer, name="x")
    row = System.objects.filter(pk=issued.system.pk).values().get()

    assert issued.system_secret not in {str(v) for v in row.values()}
    assert row["secret_digest"] == credentials.digest(issued.system_secret)


def test_audit_entries_mask_credentials(alice, customer):
    issued = services.system_create(actor=alice, organization=customer, name="x")
    services.system_secret_reissue(actor=alice, system=issued.system)

    for entry in AuditEntry.objects.filter(object_id=str(issued.system.pk)):
        for snapshot in (entry.before or {}, entry.after or {}):
            assert snapshot.get("secret_digest") in (None, "***")
            assert snapshot.get("secret_public") in (None, "***")


def test_reissuing_a_secret_invalidates_the_old_one(customer):
    issued = services.system_create(actor=None, organization=customer, name="x")
    services.system_register(system_secret=issued.system_secret)

    fresh = services.system_secret_reissue(actor=None, system=issued.system)

    system = System.objects.get(pk=issued.system.pk)
    assert not credentials.verify(issued.system_secret, system.secret_digest)
    assert credentials.verify(fresh.system_secret, system.secret_digest)
