"""Upgrading from DRF's authtoken: every key keeps working, none stays in clear."""

import datetime as dt

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from fleet_app.models import AuditEntry
from tests.conftest import rows_containing

BEFORE = [("fleet_app", "0005_system_indexes_trimmed")]
AFTER = [("fleet_app", "0006_api_tokens_hashed")]
LEGACY_KEY = "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"  # DRF's format: 40 hex characters


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


@pytest.fixture(autouse=True)
def at_latest():
    """Whatever the test migrated to, the database ends at the latest migrations."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS authtoken_token")


@pytest.fixture
def legacy_token(bob):
    """The database as a release with rest_framework.authtoken left it: one key of bob's."""
    migrate(BEFORE)
    created = timezone.now() - dt.timedelta(days=400)
    with connection.cursor() as cursor:
        # authtoken's table after its last migration (0004_alter_tokenproxy_options).
        cursor.execute(
            "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY,"
            " created timestamp with time zone NOT NULL,"
            " user_id bigint NOT NULL UNIQUE REFERENCES fleet_app_user (id))"
        )
        cursor.execute(
            "INSERT INTO authtoken_token (key, created, user_id) VALUES (%s, %s, %s)",
            [LEGACY_KEY, created, bob.pk],
        )
    return created


@pytest.mark.django_db(transaction=True)
def test_a_legacy_key_still_authenticates_and_is_no_longer_in_clear(legacy_token, bob, settings):
    assert rows_containing(LEGACY_KEY) == ["authtoken_token"]

    # Through 0006 and on to the latest schema, which the API's queries need.
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    row = AuthToken.objects.get()
    assert (row.user, row.token_key, row.created) == (bob, LEGACY_KEY[:15], legacy_token)
    # It now expires like any token, API_TOKEN_TTL_DAYS after the upgrade.
    ttl = dt.timedelta(days=settings.API_TOKEN_TTL_DAYS)
    assert ttl - dt.timedelta(minutes=5) < row.expiry - timezone.now() <= ttl
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {LEGACY_KEY}")
    assert api.get("/api/systems/").status_code == 200
    # The clear-text table is gone, and the key is nowhere in the database.
    assert "authtoken_token" not in connection.introspection.table_names()
    assert rows_containing(LEGACY_KEY) == []
    entry = AuditEntry.objects.get(action="api_token.migrate")
    assert entry.object_id == str(bob.pk) and entry.after["token_key"] == LEGACY_KEY[:15]
    assert row.digest not in str(entry.after)


@pytest.mark.django_db(transaction=True)
def test_a_database_without_authtoken_is_left_alone(bob):
    migrate(BEFORE)

    migrate(AFTER)

    assert not AuthToken.objects.exists()
    assert not AuditEntry.objects.filter(action="api_token.migrate").exists()
