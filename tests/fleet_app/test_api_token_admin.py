"""The API token admin: scoped to the staff user's subtree, shows a token once, never its
digest, and creates and revokes through the services."""

import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.urls import reverse
from knox.models import AuthToken
from rest_framework.test import APIClient

from fleet_app import tokens
from fleet_app.models import AuditEntry
from tests.factories import UserFactory

CHANGELIST = reverse("admin:knox_authtoken_changelist")
ADD = reverse("admin:knox_authtoken_add")


def change_url(row: AuthToken) -> str:
    return reverse("admin:knox_authtoken_change", args=[row.token_key])


@pytest.fixture
def root(customer):
    return UserFactory(email="root@example.com", organization=customer, is_superuser=True)


@pytest.fixture
def issued(alice, bob, charlie, root):
    """One token each: bob's (alice's subtree), charlie's (another tenant), root's."""
    return {
        "bob": tokens.api_token_create(actor=alice, user=bob, expires_in=None)[0],
        "charlie": tokens.api_token_create(actor=charlie, user=charlie, expires_in=None)[0],
        "root": tokens.api_token_create(actor=root, user=root, expires_in=None)[0],
    }


def as_user(client, user):
    client.force_login(user)
    return client


def add_form(client) -> dict:
    page = client.get(ADD).content.decode()
    once = re.search(r'name="once" value="([^"]+)"', page).group(1)
    return {"once": once, "expires_in_days": "30"}


# --- Listing and viewing -----------------------------------------------------------------


def test_an_admin_lists_the_tokens_of_its_subtree_only(client, alice, issued):
    page = as_user(client, alice).get(CHANGELIST).content.decode()

    assert issued["bob"].token_key in page
    assert issued["charlie"].token_key not in page
    assert issued["root"].token_key not in page
    # Neither in a cell, nor a link, nor a checkbox.
    assert not any(row.digest in page for row in issued.values())


def test_an_admin_cannot_open_another_tenants_or_a_superusers_token(client, alice, issued):
    as_user(client, alice)

    assert client.get(change_url(issued["charlie"])).status_code == 404
    assert client.get(change_url(issued["root"])).status_code == 404
    history = reverse("admin:knox_authtoken_history", args=[issued["root"].token_key])
    assert client.get(history).status_code == 404


def test_the_token_page_names_it_by_its_prefix(client, alice, issued):
    response = as_user(client, alice).get(change_url(issued["bob"]))

    page = response.content.decode()
    assert response.status_code == 200
    assert issued["bob"].token_key in page and issued["bob"].digest not in page


def test_a_superuser_sees_every_token(client, root, issued):
    page = as_user(client, root).get(CHANGELIST).content.decode()

    assert all(row.token_key in page for row in issued.values())


def test_a_reader_may_not_open_the_list(client, bob, issued):
    assert as_user(client, bob).get(CHANGELIST).status_code == 403
    assert client.get(ADD).status_code == 403


# --- Creating ---------------------------------------------------------------------------


def test_the_form_offers_only_accounts_the_admin_may_give_tokens_to(
    client, alice, bob, charlie, root
):
    stronger = UserFactory(organization=bob.organization, roles=["reader"])
    stronger.user_permissions.add(Permission.objects.get(codename="change_group"))

    page = as_user(client, alice).get(ADD).content.decode()

    assert f'value="{bob.pk}"' in page and f'value="{alice.pk}"' in page
    for other in (charlie, root, stronger):
        assert f'value="{other.pk}"' not in page


def test_creating_shows_the_token_once_and_it_works(client, alice, bob, system):
    as_user(client, alice)
    form = {**add_form(client), "user": bob.pk}

    response = client.post(ADD, form)

    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    token = re.search(r'<code class="api-token">([^<]+)</code>', response.content.decode())[1]
    row = AuthToken.objects.get()
    assert (row.user, row.token_key) == (bob, token[:15])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get("/api/systems/").status_code == 200
    # Nowhere but in that response: not in a message, not in the session.
    session = client.session
    assert all(token not in str(value) for value in session.values())
    assert token not in str(client.cookies)
    entry = AuditEntry.objects.get(action="api_token.create")
    assert entry.actor == alice and token not in str(entry.after)


def test_sending_the_form_again_creates_no_second_token(client, alice, bob):
    as_user(client, alice)
    form = {**add_form(client), "user": bob.pk}
    client.post(ADD, form)

    again = client.post(ADD, form)

    assert AuthToken.objects.count() == 1
    page = again.content.decode()
    assert "already sent" in page and 'class="api-token"' not in page


def test_a_forged_form_for_another_tenant_creates_nothing(client, alice, charlie, root):
    as_user(client, alice)

    for target in (charlie, root):
        response = client.post(ADD, {**add_form(client), "user": target.pk})
        assert response.status_code == 200
        assert "Select a valid choice" in response.content.decode()

    assert not AuthToken.objects.exists()


def test_an_expiry_beyond_the_limit_is_refused(client, alice, bob, settings):
    settings.API_TOKEN_TTL_DAYS = 10
    as_user(client, alice)

    response = client.post(ADD, {**add_form(client), "user": bob.pk, "expires_in_days": "11"})

    assert "less than or equal to 10" in response.content.decode()
    assert not AuthToken.objects.exists()


# --- Revoking ---------------------------------------------------------------------------


def revoke(client, *rows):
    return client.post(
        CHANGELIST,
        {
            "action": "revoke",
            ACTION_CHECKBOX_NAME: [row.token_key for row in rows],
            "confirmed": "yes",
        },
        follow=True,
    )


def test_an_admin_revokes_tokens_of_its_subtree(client, alice, issued):
    response = revoke(as_user(client, alice), issued["bob"])

    assert "1 token(s) revoked." in response.content.decode()
    assert not AuthToken.objects.filter(pk=issued["bob"].pk).exists()
    assert AuditEntry.objects.get(action="api_token.revoke").actor == alice


def test_revoking_asks_first_naming_tokens_by_their_key_prefix(client, alice, issued):
    token = issued["bob"]
    as_user(client, alice)

    page = client.post(
        CHANGELIST, {"action": "revoke", ACTION_CHECKBOX_NAME: [token.token_key]}
    ).content.decode()

    assert "Revoke 1 " in page and f"{token.token_key}… of {token.user}" in page
    # The form posts the key prefix again, never the digest.
    assert f'name="{ACTION_CHECKBOX_NAME}" value="{token.token_key}"' in page
    assert token.digest not in page
    assert AuthToken.objects.filter(pk=token.pk).exists()


def test_an_admin_cannot_revoke_what_it_cannot_see(client, alice, issued):
    revoke(as_user(client, alice), issued["charlie"], issued["root"])

    assert AuthToken.objects.filter(pk__in=[issued["charlie"].pk, issued["root"].pk]).count() == 2
    assert not AuditEntry.objects.filter(action="api_token.revoke").exists()


def test_there_is_no_delete_but_revoke(client, alice, issued):
    as_user(client, alice)
    delete = reverse("admin:knox_authtoken_delete", args=[issued["bob"].token_key])

    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert AuthToken.objects.filter(pk=issued["bob"].pk).exists()
    page = client.get(CHANGELIST).content.decode()
    assert "delete_selected" not in page and 'value="revoke"' in page
