"""POST {collect_url}/heartbeat."""

import datetime as dt
import os

import pytest
from django.db import connection
from django.utils import timezone

from fleet_app.models import System, SystemActivityDay
from tests.conftest import basic_auth
from tests.factories import make_system

URL = "/collect/api/systems/heartbeat"


def test_it_acknowledges_and_updates_liveness(client, system, auth_header):
    # Like curl -X POST with no body and no Content-Type.
    response = client.generic("POST", URL, b"", content_type="", **auth_header)

    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 200
    assert body["data"]["system_key"] == system.system_key
    assert body["data"]["acknowledged"] is True
    system.refresh_from_db()
    assert system.last_heartbeat_at is not None
    assert body["data"]["last_heartbeat"].startswith(system.last_heartbeat_at.strftime("%Y-%m-%d"))
    assert system.status == System.Status.ACTIVE


def test_it_ignores_the_body_and_a_trailing_slash(client, system, auth_header):
    response = client.post(URL + "/", data=b"garbage{", content_type="text/plain", **auth_header)

    assert response.status_code == 200


def test_a_system_this_process_knows_costs_one_query(
    client, system, auth_header, django_assert_num_queries
):
    client.post(URL, **auth_header)  # full path: the process now knows the system
    # 1. UPDATE … WHERE id, digest, registered, confirmed, not suspended, not deleted
    with django_assert_num_queries(1):
        response = client.post(URL, **auth_header)
    assert response.status_code == 200
    assert response.json()["data"]["system_key"] == system.system_key


def test_a_system_new_to_this_process_costs_two_queries(
    client, system, auth_header, django_assert_num_queries
):
    from fleet_app import hot

    client.post(URL, **auth_header)
    hot.forget_all()  # another worker process, say
    # 1. SELECT the system by its unique system_key   2. UPDATE last_heartbeat_at
    with django_assert_num_queries(2):
        response = client.post(URL, **auth_header)
    assert response.status_code == 200


def test_the_first_heartbeat_of_a_day_records_activity(
    client, system, auth_header, django_assert_num_queries
):
    from fleet_app import hot

    client.post(URL, **auth_header)
    System.objects.filter(pk=system.pk).update(
        last_heartbeat_at=timezone.now() - dt.timedelta(days=1)
    )
    hot.forget_all()
    # 1. SELECT system   2. UPDATE last_heartbeat_at with, in the same statement, INSERT …
    # ON CONFLICT DO NOTHING the activity day (SQLite, the embedded default: two statements)
    with django_assert_num_queries(2 if connection.vendor == "postgresql" else 3):
        client.post(URL, **auth_header)
    client.post(URL, **auth_header)

    assert SystemActivityDay.objects.filter(system=system).count() == 1


def test_the_fast_path_records_the_first_heartbeat_of_a_day_too(
    client, system, auth_header, django_assert_num_queries
):
    from fleet_app import hot

    client.post(URL, **auth_header)
    SystemActivityDay.objects.all().delete()
    hot._known[system.system_key].day = timezone.now().date() - dt.timedelta(days=1)
    # 1. UPDATE last_heartbeat_at and INSERT the activity day, one statement (two on SQLite)
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 2):
        client.post(URL, **auth_header)

    assert SystemActivityDay.objects.filter(system=system).count() == 1


def test_the_fast_path_never_outlives_a_reissued_secret(client, system, auth_header):
    from fleet_app import services

    client.post(URL, **auth_header)
    services.system_secret_reissue(actor=None, system=system)

    assert client.post(URL, **auth_header).status_code == 401


@pytest.mark.parametrize("field", ["suspended_at", "deleted_at"])
def test_the_fast_path_never_outlives_a_suspension(client, system, auth_header, field):
    client.post(URL, **auth_header)
    before = System.objects.get(pk=system.pk).last_heartbeat_at
    System.objects.filter(pk=system.pk).update(**{field: timezone.now()})

    response = client.post(URL, **auth_header)

    assert response.status_code == 403
    assert System.objects.get(pk=system.pk).last_heartbeat_at == before


def test_a_wrong_secret_never_takes_the_fast_path(client, system, auth_header):
    client.post(URL, **auth_header)

    response = client.post(URL, HTTP_AUTHORIZATION=basic_auth(system.system_key, "my_x.bad"))

    assert response.status_code == 401


def _unchanged(system):
    return System.objects.get(pk=system.pk).last_heartbeat_at is None


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer abc",
        "Basic !!!notbase64",
        "Basic " + "bm9jb2xvbg==",  # "nocolon"
    ],
)
def test_it_rejects_missing_or_malformed_credentials(client, system, header):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}

    response = client.post(URL, **extra)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")
    assert response.json()["code"] == 401
    assert _unchanged(system)


def test_it_rejects_a_wrong_secret(client, system):
    response = client.post(URL, HTTP_AUTHORIZATION=basic_auth(system.system_key, "my_x.wrong"))

    assert response.status_code == 401
    assert _unchanged(system)


def test_it_rejects_an_unknown_key(client, system):
    response = client.post(URL, HTTP_AUTHORIZATION=basic_auth("NETH-0000", system.issued_secret))

    assert response.status_code == 401
    assert _unchanged(system)


def test_it_refuses_an_unregistered_system(client, customer):
    system = make_system(customer, registered=False)

    response = client.post(
        URL, HTTP_AUTHORIZATION=basic_auth(system.system_key, system.issued_secret)
    )

    assert response.status_code == 403
    assert "not registered" in response.json()["message"]
    assert _unchanged(system)


@pytest.mark.parametrize("field", ["suspended_at", "deleted_at"])
def test_it_refuses_suspended_or_deleted_systems(client, system, auth_header, field):
    System.objects.filter(pk=system.pk).update(**{field: timezone.now()})

    response = client.post(URL, **auth_header)

    assert response.status_code == 403
    assert _unchanged(system)


def test_it_only_allows_post(client, system, auth_header):
    response = client.get(URL, **auth_header)

    assert response.status_code == 405
    assert _unchanged(system)


def test_status_turns_inactive_after_the_timeout(system, settings):
    settings.FLEET_HEARTBEAT_TIMEOUT_MINUTES = 20
    now = timezone.now()
    System.objects.filter(pk=system.pk).update(last_heartbeat_at=now - dt.timedelta(minutes=19))
    system.refresh_from_db()
    assert system.status == "active"
    System.objects.filter(pk=system.pk).update(last_heartbeat_at=now - dt.timedelta(minutes=21))
    system.refresh_from_db()
    assert system.status == "inactive"
    assert System.objects.with_status_filter("inactive").filter(pk=system.pk).exists()
    assert System.objects.with_status().get(pk=system.pk).status_value == "inactive"


def test_the_first_call_with_a_new_secret_confirms_it(client, system, auth_header):
    from fleet_app import services
    from fleet_app.signals import secret_confirmed

    seen = []

    def receiver(sender, system, **kwargs):
        seen.append(system.pk)

    secret_confirmed.connect(receiver)
    try:
        client.post(URL, **auth_header)
        client.post(URL, **auth_header)
        confirmed_at = System.objects.get(pk=system.pk).secret_confirmed_at
        fresh = services.system_secret_reissue(actor=None, system=system)
        assert System.objects.get(pk=system.pk).secret_confirmed_at is None
        client.post(URL, HTTP_AUTHORIZATION=basic_auth(system.system_key, fresh.system_secret))
    finally:
        secret_confirmed.disconnect(receiver)

    assert confirmed_at is not None
    assert seen == [system.pk, system.pk]  # once per issued secret, not per call
    assert System.objects.get(pk=system.pk).secret_confirmed_at > confirmed_at


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        # Each was a 500: a NUL reached PostgreSQL as a query parameter; a header that is
        # not ASCII made base64 raise a ValueError nobody caught.
        (basic_auth("NETH-\x00", "my_\x00.\x00"), "must not contain NUL characters"),
        ("Basic \xe9\xe8\xff", "not valid base64"),
    ],
)
def test_malformed_basic_credentials_are_401(client, system, authorization, message):
    response = client.post(URL, HTTP_AUTHORIZATION=authorization)

    assert response.status_code == 401
    assert message in response.json()["message"]
    assert System.objects.get(pk=system.pk).last_heartbeat_at is None


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_indexes is PostgreSQL's")
@pytest.mark.django_db
def test_the_system_table_has_no_index_a_heartbeat_writes_for_nothing():
    # None of these covers last_heartbeat_at: an index on it made every heartbeat a
    # non-HOT update, an entry in each of these. A new one must earn its place.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = %s", [System._meta.db_table]
        )
        columns = sorted(row[0].split(" USING btree ")[1] for row in cursor.fetchall())
    assert columns == [
        "(created_at DESC) WHERE (last_inventory_at IS NULL)",
        "(created_by_id)",
        "(id)",
        "(organization_id, name)",
        "(secret_public)",
        "(system_key)",
        "(type)",
    ]


def test_heartbeats_are_hot_updates(client, system, auth_header):
    """The heartbeat's UPDATE stays on its heap page and writes no index entry (HOT):
    counted by PostgreSQL for this transaction."""
    if connection.vendor != "postgresql":
        message = "HOT updates are PostgreSQL's"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    table = System._meta.db_table

    def updates() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = %s",
                [table],
            )
            return cursor.fetchone()

    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = %s", [table])
        assert cursor.fetchone()[0] == ["fillfactor=90"]
    client.post(URL, **auth_header)  # the full path: it also confirms the secret
    before = updates()
    for _ in range(3):
        assert client.post(URL, **auth_header).status_code == 200
    after = updates()
    assert after[0] - before[0] == 3
    assert after[1] - before[1] == 3
