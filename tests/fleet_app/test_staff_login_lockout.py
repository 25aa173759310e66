"""Staff sign-in at /admin/login/: locked out per account and per address (django-axes)."""

import datetime as dt
import io

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.utils import timezone

from tests.factories import UserFactory

URL = "/admin/login/"
PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def small_limits(settings, tmp_path):
    settings.AXES_FAILURE_LIMIT = 3
    settings.TRUSTED_PROXY_COUNT = 0
    settings.RUN_DIR = tmp_path  # the hashing slots of this test only


@pytest.fixture
def ann(db):
    return UserFactory(email="ann@example.com", is_superuser=True)


@pytest.fixture
def ben(db):
    return UserFactory(email="ben@example.com", is_superuser=True)


def sign_in(client, email, password, address="192.0.2.10", **extra):
    return client.post(URL, {"username": email, "password": password}, REMOTE_ADDR=address, **extra)


def signed_in(response):
    return response.status_code == 302 and "_auth_user_id" in response.wsgi_request.session


def test_a_correct_password_signs_in(client, ann):
    assert signed_in(sign_in(client, "ann@example.com", PASSWORD))


def test_a_wrong_password_shows_the_form_again(client, ann):
    response = sign_in(client, "ann@example.com", "wrong")

    assert response.status_code == 200
    assert AccessAttempt.objects.get().failures_since_start == 1


def test_failures_on_one_account_from_one_address_lock_that_address_out(client, ann):
    for _ in range(3):
        sign_in(client, "ann@example.com", "wrong", address="192.0.2.1")

    response = sign_in(client, "ann@example.com", PASSWORD, address="192.0.2.1")

    assert response.status_code == 429
    assert int(response["Retry-After"]) == 15 * 60
    assert (
        "Too many failed sign-ins for this account or from this address; "
        "try again in 15 minutes." in response.content.decode()
    )
    assert "_auth_user_id" not in client.session


def test_others_failures_never_lock_the_owner_out(client, ann):
    # Guesses at ann's account from many addresses: each address is counted, and the
    # owner, from an address that has not failed, still signs in.
    for i in range(10):
        sign_in(client, "ann@example.com", "wrong", address=f"192.0.2.{i + 1}")

    assert signed_in(sign_in(client, "ann@example.com", PASSWORD, address="198.51.100.7"))


def test_the_account_is_counted_in_any_case(client, ann):
    for spelling in ("ann@example.com", "Ann@Example.com", " ANN@EXAMPLE.COM"):
        sign_in(client, spelling, "wrong", address="192.0.2.1")

    attempt = AccessAttempt.objects.get()
    assert attempt.username == "ann@example.com"
    assert attempt.failures_since_start == 3


def test_failures_from_one_address_lock_that_address_for_every_account(client, ann, ben):
    for i in range(3):
        sign_in(client, f"guess{i}@example.com", "wrong", address="192.0.2.66")

    here = sign_in(client, "ben@example.com", PASSWORD, address="192.0.2.66")
    elsewhere = sign_in(client, "ann@example.com", PASSWORD, address="198.51.100.7")

    assert here.status_code == 429
    assert signed_in(elsewhere)


def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(client, ann, ben, settings):
    for i in range(3):
        # Without a trusted proxy the claimed addresses are ignored: one peer, one bucket.
        sign_in(client, f"guess{i}@example.com", "wrong", HTTP_X_FORWARDED_FOR=f"10.9.0.{i}")
    assert sign_in(client, "ben@example.com", PASSWORD).status_code == 429

    settings.TRUSTED_PROXY_COUNT = 1
    # Behind one proxy, two clients that share it are two addresses.
    other = sign_in(client, "ann@example.com", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.8")

    assert signed_in(other)


def test_failures_during_a_lockout_do_not_extend_it(client, ann):
    for _ in range(3):
        sign_in(client, "ann@example.com", "wrong")
    AccessAttempt.objects.update(attempt_time=timezone.now() - dt.timedelta(minutes=14))
    for _ in range(5):
        assert sign_in(client, "ann@example.com", "wrong").status_code == 429

    AccessAttempt.objects.update(attempt_time=timezone.now() - dt.timedelta(minutes=16))

    assert signed_in(sign_in(client, "ann@example.com", PASSWORD))


def test_the_cool_off_comes_from_the_settings(client, ann, settings):
    settings.AXES_COOLOFF_TIME = dt.timedelta(minutes=1)
    for _ in range(3):
        sign_in(client, "ann@example.com", "wrong")

    response = sign_in(client, "ann@example.com", PASSWORD)

    assert response.status_code == 429
    assert int(response["Retry-After"]) == 60
    assert "try again in 1 minute." in response.content.decode()


def test_axes_reset_unlocks(client, ann):
    for _ in range(3):
        sign_in(client, "ann@example.com", "wrong")
    assert sign_in(client, "ann@example.com", PASSWORD).status_code == 429

    call_command("axes_reset", stdout=io.StringIO())

    assert signed_in(sign_in(client, "ann@example.com", PASSWORD))
