"""The custom user: e-mail login, stored as typed, unique case-insensitively when active."""

import pytest
from django.contrib.auth import authenticate
from django.db import IntegrityError, connection, transaction
from django.test import RequestFactory

from fleet_app.models import User


@pytest.mark.django_db
def test_email_is_stored_as_typed():
    user = User.objects.create_user("John.Doe@Example.COM", "pw-1234567")

    assert User.objects.get(pk=user.pk).email == "John.Doe@example.com"


# SQLite's lower() folds ASCII only; PostgreSQL (production and CI) folds Unicode too.
unicode_needs_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite lower() does not fold non-ASCII letters"
)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "first, second",
    [
        ("ann@example.com", "ANN@example.com"),
        pytest.param("Émile@example.com", "émile@example.com", marks=unicode_needs_postgresql),
    ],
)
def test_two_active_accounts_cannot_share_an_email_in_any_case(first, second):
    User.objects.create_user(first, "pw")

    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create_user(second, "pw")


@pytest.mark.django_db
def test_an_inactive_duplicate_may_exist_but_not_be_reactivated():
    User.objects.create_user("ann@example.com", "pw")
    duplicate = User.objects.create_user("Ann@example.com", "pw", is_active=False)

    duplicate.is_active = True
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()


@pytest.mark.django_db
def test_login_matches_the_active_account_in_any_case():
    User.objects.create_user("ann@example.com", "old-password", is_active=False)
    active = User.objects.create_user("Ann@Example.com", "right-password")

    # The sign-in lockout needs the request (its address); every real sign-in has one.
    request = RequestFactory().post("/admin/login/")

    assert authenticate(request, username="ANN@EXAMPLE.COM", password="right-password") == active
    assert authenticate(request, username="ann@example.com", password="old-password") is None
    assert authenticate(request, username="nobody@example.com", password="x") is None
