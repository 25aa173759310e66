"""Staff API tokens: who may create and revoke them, how they authenticate, that only a
digest is stored, and that every event is audited."""

import datetime as dt

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from knox.models import AuthToken
from rest_framework import exceptions
from rest_framework.test import APIClient

from fleet_app import tokens
from fleet_app.api.authentication import ApiTokenAuthentication
from fleet_app.errors import Forbidden, InvalidInput
from fleet_app.models import AuditEntry
from tests.conftest import rows_containing
from tests.factories import UserFactory


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def root(customer):
    return UserFactory(email="root@example.com", organization=customer, is_superuser=True)


def call(api, token: str):
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return api.get("/api/systems/")


def entries(action: str):
    return AuditEntry.objects.filter(action=action)


# --- Authentication --------------------------------------------------------------------


def test_a_token_works_on_the_staff_api(api, alice, bob, system):
    _, token = tokens.api_token_create(actor=alice, user=bob, expires_in=None)

    response = call(api, token)

    assert response.status_code == 200
    assert [s["name"] for s in response.json()["results"]] == [system.name]


def test_the_database_holds_only_a_digest_and_the_key_prefix(alice, bob):
    row, token = tokens.api_token_create(actor=alice, user=bob, expires_in=None)

    assert rows_containing(token) == []
    assert row.token_key == token[:15] and row.digest != token
    # The audit names the token by its prefix, never by its digest.
    entry = entries("api_token.create").get()
    assert entry.after["token_key"] == row.token_key
    assert row.digest not in str(entry.after) and row.digest not in entry.object_repr


def test_it_authenticates_with_one_indexed_lookup(alice, bob, django_assert_num_queries):
    _, token = tokens.api_token_create(actor=alice, user=bob, expires_in=None)

    # 1. the token by its digest (primary key), joined to its user
    with django_assert_num_queries(1):
        user, _ = ApiTokenAuthentication().authenticate_credentials(token.encode())

    assert user == bob


def test_an_expired_token_is_refused_and_purged_with_an_audit_entry(api, alice, bob):
    row, token = tokens.api_token_create(actor=alice, user=bob, expires_in=dt.timedelta(days=1))
    AuthToken.objects.filter(pk=row.pk).update(expiry=timezone.now() - dt.timedelta(seconds=1))

    response = call(api, token)

    assert response.status_code == 401
    assert response.json() == {"detail": "This API token has expired."}
    # Refusing it deletes nothing: removal is the purge's, which audits it.
    assert AuthToken.objects.filter(pk=row.pk).exists()
    assert tokens.api_tokens_purge_expired() == 1
    assert not AuthToken.objects.filter(pk=row.pk).exists()
    entry = entries("api_token.expire").get()
    assert entry.actor is None and entry.before["token_key"] == row.token_key
    assert entry.organization == bob.organization


def test_the_purge_leaves_live_tokens_alone(alice, bob):
    tokens.api_token_create(actor=alice, user=bob, expires_in=None)

    assert tokens.api_tokens_purge_expired() == 0
    assert AuthToken.objects.count() == 1


def test_a_revoked_token_is_refused(api, alice, bob):
    row, token = tokens.api_token_create(actor=alice, user=bob, expires_in=None)

    tokens.api_token_revoke(actor=alice, token=row)

    assert call(api, token).status_code == 401
    entry = entries("api_token.revoke").get()
    assert entry.actor == alice and entry.before["token_key"] == row.token_key


@pytest.mark.parametrize("token", ["0" * 64, "Ünïcode", "short"])
def test_an_unknown_token_is_refused(api, token, db):
    api.credentials(HTTP_AUTHORIZATION="Token " + token)

    response = api.get("/api/systems/")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_a_token_of_a_deactivated_account_is_refused(alice, bob):
    _, token = tokens.api_token_create(actor=alice, user=bob, expires_in=None)
    bob.is_active = False
    bob.save(update_fields=["is_active"])

    with pytest.raises(exceptions.AuthenticationFailed):
        ApiTokenAuthentication().authenticate_credentials(token.encode())


# --- Who may create ----------------------------------------------------------------------


def test_an_admin_may_give_a_token_to_an_account_of_its_subtree(alice, bob):
    row, _ = tokens.api_token_create(actor=alice, user=bob, expires_in=dt.timedelta(days=7))

    assert row.user == bob
    assert dt.timedelta(days=6) < row.expiry - timezone.now() <= dt.timedelta(days=7)
    entry = entries("api_token.create").get()
    assert (entry.actor, entry.organization) == (alice, bob.organization)


def test_an_admin_cannot_give_one_outside_its_subtree(alice, charlie):
    with pytest.raises(Forbidden, match="outside your organization"):
        tokens.api_token_create(actor=alice, user=charlie, expires_in=None)

    assert not AuthToken.objects.exists()
    refused = entries("api_token.create_refused").get()
    # Filed under the actor's organization, not the other tenant's.
    assert (refused.actor, refused.organization) == (alice, alice.organization)
    assert refused.after["user"] == charlie.pk


def test_an_admin_cannot_give_one_to_a_superuser(alice, root):
    with pytest.raises(Forbidden, match="superuser"):
        tokens.api_token_create(actor=alice, user=root, expires_in=None)

    assert not AuthToken.objects.exists()
    assert entries("api_token.create_refused").count() == 1


def test_an_admin_cannot_give_one_to_an_account_holding_more(alice, bob):
    bob.user_permissions.add(Permission.objects.get(codename="change_group"))

    with pytest.raises(Forbidden, match="permissions you do not have"):
        tokens.api_token_create(actor=alice, user=bob, expires_in=None)

    assert not AuthToken.objects.exists()
    assert bob not in tokens.api_tokens_creatable_for(alice)


def test_a_reader_cannot_give_tokens_even_to_itself(bob):
    with pytest.raises(Forbidden, match="permission to manage API tokens"):
        tokens.api_token_create(actor=bob, user=bob, expires_in=None)

    assert not tokens.api_tokens_creatable_for(bob).exists()


def test_a_superuser_may_give_one_to_anyone(root, charlie):
    other_root = UserFactory(is_superuser=True)

    tokens.api_token_create(actor=root, user=charlie, expires_in=None)
    tokens.api_token_create(actor=root, user=other_root, expires_in=None)

    assert AuthToken.objects.count() == 2


def test_the_choices_are_the_accounts_the_actor_may_give_tokens_to(alice, bob, charlie, root):
    assert set(tokens.api_tokens_creatable_for(alice)) == {alice, bob}
    assert set(tokens.api_tokens_creatable_for(charlie)) == {charlie}


def test_every_token_expires_within_the_configured_days(alice, bob, settings):
    settings.API_TOKEN_TTL_DAYS = 30

    with pytest.raises(InvalidInput, match="30 days at most"):
        tokens.api_token_create(actor=alice, user=bob, expires_in=dt.timedelta(days=31))
    with pytest.raises(InvalidInput, match="in the future"):
        tokens.api_token_create(actor=alice, user=bob, expires_in=dt.timedelta(0))
    row, _ = tokens.api_token_create(actor=alice, user=bob, expires_in=None)

    assert dt.timedelta(days=29) < row.expiry - timezone.now() <= dt.timedelta(days=30)


# --- Who may revoke ----------------------------------------------------------------------


def test_an_outsider_cannot_revoke_a_token_of_another_tenant(alice, bob, charlie):
    row, token = tokens.api_token_create(actor=alice, user=bob, expires_in=None)

    with pytest.raises(Forbidden, match="outside your organization"):
        tokens.api_token_revoke(actor=charlie, token=row)

    assert AuthToken.objects.filter(pk=row.pk).exists()
    refused = entries("api_token.revoke_refused").get()
    assert refused.after["token_key"] == row.token_key and token not in str(refused.after)


def test_an_admin_cannot_revoke_a_superusers_token(alice, root):
    row, _ = tokens.api_token_create(actor=root, user=root, expires_in=None)

    with pytest.raises(Forbidden, match="superuser"):
        tokens.api_token_revoke(actor=alice, token=row)

    assert AuthToken.objects.filter(pk=row.pk).exists()


def test_revoking_twice_records_one_revocation(alice, bob):
    row, _ = tokens.api_token_create(actor=alice, user=bob, expires_in=None)

    tokens.api_token_revoke(actor=alice, token=row)
    tokens.api_token_revoke(actor=alice, token=row)

    assert entries("api_token.revoke").count() == 1
