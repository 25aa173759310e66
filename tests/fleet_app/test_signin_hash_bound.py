"""Staff password checks hold one of a few host-wide hashing slots (fleet_app/hashing.py)."""

import fcntl
import os
import subprocess
import sys
import threading

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import MD5PasswordHasher
from django.test import RequestFactory

from fleet_app import hashing
from fleet_app.models import User
from tests.factories import UserFactory

URL = "/admin/login/"
PASSWORD = "correct horse battery"
BUSY = "Too many sign-ins at once; try again in a moment."


class CountingHasher(MD5PasswordHasher):
    """MD5, remembering which thread ran each hash and at what priority."""

    runs: list[tuple[int, int]] = []

    def encode(self, password, salt):
        tid = threading.get_native_id()
        self.runs.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        return super().encode(password, salt)


class NewerHasher(MD5PasswordHasher):
    """Stands for the hasher a deployment moves to."""

    algorithm = "md5_newer"


@pytest.fixture(autouse=True)
def bounded(settings, tmp_path):
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    settings.RUN_DIR = tmp_path
    settings.SIGNIN_HASH_SLOTS = 2
    settings.SIGNIN_HASH_WAIT_SECONDS = 0.2
    settings.SIGNIN_HASH_NICE = 10
    CountingHasher.runs = []
    return tmp_path


@pytest.fixture
def ann(db):
    user = UserFactory(email="ann@example.com", is_superuser=True)
    CountingHasher.runs = []
    return user


def sign_in(client, password=PASSWORD):
    return client.post(URL, {"username": "ann@example.com", "password": password})


def hold_slots(directory, count):
    """Take the slots as another web process would: another open file, an exclusive flock."""
    held = []
    for i in range(count):
        fd = os.open(directory / f"password-hash-{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(fd)
    return held


def test_a_sign_in_hashes_on_a_lower_priority_thread(client, ann):
    response = sign_in(client)

    assert response.status_code == 302
    [(tid, nice)] = CountingHasher.runs
    assert tid != threading.get_native_id()
    assert nice >= os.getpriority(os.PRIO_PROCESS, 0) + 10 or nice == 19


def test_when_every_slot_is_taken_the_sign_in_is_refused_without_hashing(client, ann, bounded):
    held = hold_slots(bounded, 2)
    try:
        response = sign_in(client)
    finally:
        for fd in held:
            os.close(fd)

    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert BUSY in response.content.decode()
    assert CountingHasher.runs == []
    assert "_auth_user_id" not in client.session
    # Not a failed password: the lockout does not count it.
    assert not AccessAttempt.objects.exists()


def test_a_slot_held_by_another_process_counts(client, ann, bounded, settings):
    settings.SIGNIN_HASH_SLOTS = 1
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(bounded / 'password-hash-0.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = sign_in(client)
    finally:
        holder.communicate("")

    # The holder exited: the kernel released its lock.
    accepted = sign_in(client)

    assert refused.status_code == 503
    assert accepted.status_code == 302


def test_a_slot_freed_within_the_wait_is_taken(ann, bounded, settings):
    settings.SIGNIN_HASH_WAIT_SECONDS = 2
    held = hold_slots(bounded, 2)
    timer = threading.Timer(0.3, lambda: [os.close(fd) for fd in held])
    timer.start()

    user = authenticate(RequestFactory().post(URL), username="ann@example.com", password=PASSWORD)

    timer.join()
    assert user == ann
    assert len(CountingHasher.runs) == 1


def test_slots_are_released_after_each_hash(client, ann, settings):
    settings.SIGNIN_HASH_SLOTS = 1
    for _ in range(3):
        assert sign_in(client, "wrong").status_code == 200

    assert sign_in(client).status_code == 302
    assert len(CountingHasher.runs) == 4


def test_an_unknown_account_costs_a_hash_too(client, db):
    client.post(URL, {"username": "nobody@example.com", "password": "x"})

    assert len(CountingHasher.runs) == 1


def test_with_the_bound_off_hashes_run_on_the_request_thread(client, ann, bounded, settings):
    settings.SIGNIN_HASH_SLOTS = 0
    held = hold_slots(bounded, 2)
    try:
        response = sign_in(client)
    finally:
        for fd in held:
            os.close(fd)

    assert response.status_code == 302
    [(tid, _)] = CountingHasher.runs
    assert tid == threading.get_native_id()


def test_an_outdated_hash_is_upgraded_on_sign_in(ann, settings):
    settings.PASSWORD_HASHERS = [
        f"{__name__}.NewerHasher",
        f"{__name__}.CountingHasher",
    ]
    request = RequestFactory().post(URL)

    assert authenticate(request, username="ann@example.com", password=PASSWORD) == ann
    assert User.objects.get(pk=ann.pk).password.startswith("md5_newer$")


def test_while_every_slot_is_taken_the_refusal_costs_no_query(
    client, ann, bounded, django_assert_num_queries
):
    held = hold_slots(bounded, 2)
    try:
        with django_assert_num_queries(0):  # no session, no lockout check, no account
            response = sign_in(client)
    finally:
        for fd in held:
            os.close(fd)

    assert response.status_code == 503


def test_a_sign_in_that_loses_the_race_for_a_slot_is_refused_by_the_backend(
    ann, bounded, monkeypatch
):
    from fleet_app import signin

    # It passed the middleware's glance; the slots were taken before it reached the hash.
    monkeypatch.setattr(signin, "slots_taken", lambda: False)
    held = hold_slots(bounded, 2)
    try:
        with pytest.raises(hashing.SignInBusy):
            authenticate(RequestFactory().post(URL), username="ann@example.com", password=PASSWORD)
    finally:
        for fd in held:
            os.close(fd)

    assert CountingHasher.runs == []
    assert not AccessAttempt.objects.exists()
