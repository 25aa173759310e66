"""Overlapping /proxy/credentials calls never strand a cluster.

ns8 runs migrate-to-my from several scripts that start together: two calls overlap, and
the cluster may keep either answer. Every secret issued since the last confirmation
authenticates until one is used; the first used wins and the others die then.
"""

import datetime as dt
import threading

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from fleet_app import services as fleet
from fleet_app.models import PendingSecret, System
from migrations_app.cutover import rotation
from migrations_app.cutover import services as cutover
from migrations_app.models import LegacyMapping
from tests.conftest import basic_auth, rows_containing
from tests.factories import UserFactory, make_mapping

CREDENTIALS = "/proxy/credentials"
HEARTBEAT = "/collect/api/systems/heartbeat"
INVENTORY = "/collect/api/systems/inventory"


@pytest.fixture(autouse=True)
def fresh_throttle():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def mapping(customer):
    return make_mapping(customer)


def issue(client, mapping) -> dict:
    response = client.get(
        CREDENTIALS, HTTP_AUTHORIZATION=basic_auth(mapping.legacy_system_id, mapping.legacy_token)
    )
    assert response.status_code == 200, response.content
    return response.json()["data"]


def heartbeat(client, data) -> int:
    auth = basic_auth(data["system_key"], data["system_secret"])
    return client.post(HEARTBEAT, HTTP_AUTHORIZATION=auth).status_code


def inventory(client, data, payload) -> int:
    auth = basic_auth(data["system_key"], data["system_secret"])
    return client.post(
        INVENTORY, payload, content_type="application/json", HTTP_AUTHORIZATION=auth
    ).status_code


def test_two_secrets_the_first_used_works_and_the_second_then_dies(
    client, mapping, inventory_payload
):
    first = issue(client, mapping)
    second = issue(client, mapping)  # the answer the cluster did not keep

    assert heartbeat(client, first) == 200
    assert inventory(client, first, inventory_payload) == 202
    assert heartbeat(client, second) == 401
    assert inventory(client, second, inventory_payload) == 401
    assert heartbeat(client, first) == 200
    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.confirmed_at is not None and row.rotation_count == 2
    assert not PendingSecret.objects.filter(system_id=mapping.system_id).exists()


def test_two_secrets_the_second_used_first_works_and_the_first_then_dies(
    client, mapping, inventory_payload
):
    first = issue(client, mapping)
    second = issue(client, mapping)

    assert heartbeat(client, second) == 200
    assert inventory(client, second, inventory_payload) == 202
    assert heartbeat(client, first) == 401
    assert inventory(client, first, inventory_payload) == 401
    assert LegacyMapping.objects.get(pk=mapping.pk).confirmed_at is not None


def test_the_n_plus_first_pending_secret_revokes_the_oldest(client, mapping, settings):
    settings.ROTATION_PENDING_SECRETS = 3
    answers = [issue(client, mapping) for _ in range(4)]

    assert PendingSecret.objects.filter(system_id=mapping.system_id).count() == 3
    assert heartbeat(client, answers[0]) == 401  # the oldest, revoked by the fourth
    assert heartbeat(client, answers[1]) == 200  # the oldest still pending wins
    assert [heartbeat(client, a) for a in answers[2:]] == [401, 401]


def test_a_pending_secret_expires_after_the_grace_and_staff_can_reopen_it(
    client, mapping, settings, alice
):
    settings.ROTATION_GRACE_MINUTES = 60
    first = issue(client, mapping)
    second = issue(client, mapping)
    PendingSecret.objects.filter(system_id=mapping.system_id).update(
        issued_at=timezone.now() - dt.timedelta(minutes=61)
    )

    assert heartbeat(client, first) == 401  # stranded: older than the grace
    assert LegacyMapping.objects.get(pk=mapping.pk).confirmed_at is None

    # Re-opening the unconfirmed mapping makes what was issued valid again.
    cutover.mapping_reopen(actor=alice, mapping=mapping)

    assert heartbeat(client, first) == 200
    assert heartbeat(client, second) == 401
    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.confirmed_at is not None and row.reopened_at is not None


def test_the_newest_secret_needs_no_pending_row_and_a_reissue_by_staff_revokes_all(
    client, mapping, alice
):
    first = issue(client, mapping)
    second = issue(client, mapping)

    fleet.system_secret_reissue(actor=alice, system=mapping.system)

    assert not PendingSecret.objects.filter(system_id=mapping.system_id).exists()
    assert heartbeat(client, first) == 401
    assert heartbeat(client, second) == 401


def test_a_bulk_rotation_revokes_the_pending_secrets(
    client, mapping, celery_eager, django_capture_on_commit_callbacks
):
    first = issue(client, mapping)
    second = issue(client, mapping)
    # Asked for long ago: the bulk rotation may re-key it (the pending rows themselves
    # are still within the grace, so only the revocation stops them).
    LegacyMapping.objects.filter(pk=mapping.pk).update(
        last_attempt_at=timezone.now() - dt.timedelta(hours=3)
    )
    with django_capture_on_commit_callbacks(execute=True):
        run = rotation.rotation_run_start(actor=None, filters={"ids": [mapping.pk]})

    run.refresh_from_db()
    assert run.state == "succeeded"
    assert not PendingSecret.objects.filter(system_id=mapping.system_id).exists()
    assert heartbeat(client, first) == 401
    assert heartbeat(client, second) == 401


def test_pending_secrets_are_kept_as_digests_only(client, mapping):
    answers = [issue(client, mapping) for _ in range(3)]

    for answer in answers:
        secret = answer["system_secret"]
        assert rows_containing(secret) == []
        assert rows_containing(secret.split(".", 1)[1]) == []
    assert PendingSecret.objects.filter(system_id=mapping.system_id).count() == 3


def test_a_confirmed_system_never_reads_the_pending_secrets(
    client, mapping, django_assert_num_queries
):
    data = issue(client, mapping)
    assert heartbeat(client, data) == 200
    wrong = {"system_key": data["system_key"], "system_secret": data["system_secret"] + "x"}
    # 1. SELECT the system by its key: the secret is wrong, the system is confirmed, no
    #    pending secret is looked at.
    with django_assert_num_queries(1):
        assert heartbeat(client, wrong) == 401


def test_the_admin_and_the_dashboard_show_how_many_secrets_are_pending(client, mapping, owner):
    for _ in range(3):
        issue(client, mapping)
    support = UserFactory(email="sam@example.com", organization=owner, roles=["support"])
    client.force_login(support)

    page = client.get(f"/admin/migrations_app/legacymapping/{mapping.pk}/change/")
    dashboard = client.get("/dashboard/cutover/")

    assert "3 (each authenticates until one of them is used)" in page.content.decode()
    row = next(m for m in dashboard.context["unconfirmed"] if m.pk == mapping.pk)
    assert row.pending_secrets == 3
    assert 'data-pending="3"' in dashboard.content.decode()


@pytest.mark.django_db(transaction=True)
def test_two_overlapping_calls_both_answer_and_either_answer_works(customer):
    mapping = make_mapping(customer)
    answers: list[dict] = []
    barrier = threading.Barrier(2)

    def call():
        try:
            barrier.wait(timeout=10)
            answers.append(issue(Client(), mapping))
        finally:
            connection.close()

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(answers) == 2
    # Whichever answer the cluster kept (stored in either order), it works, and the other
    # one dies with its first call.
    kept, lost = answers
    client = Client()
    assert heartbeat(client, kept) == 200
    assert heartbeat(client, lost) == 401
    assert System.objects.get(pk=mapping.system_id).secret_confirmed_at is not None
