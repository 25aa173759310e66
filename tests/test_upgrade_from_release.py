"""Upgrading the database of the last release keeps every row.

``tests/upgrade/release_09658a2.sql`` is a database as the release at 09658a2 left it, with
rows in every table a model of that release owns (``tests/upgrade/capture_release.py``,
run against the release tree, wrote it). The test loads it into a fresh database, runs this
tree's ``manage.py migrate`` on it in a separate process, as an operator would, and
compares the rows before and after: none is gone, none changed in a column both schemas
have. The legacy API token table is dropped on purpose; its keys must be in knox, and the
key and the system secret the release issued must still authenticate.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from fleet_app.roles import ALL_ROLES

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="the release dump is PostgreSQL's (pg_dump); CI runs this on PostgreSQL",
)

ROOT = Path(__file__).resolve().parent.parent
DUMP = ROOT / "tests" / "upgrade" / "release_09658a2.sql"

# As in tests/upgrade/capture_release.py: the dump's digests are keyed by these.
SECRET_KEY = "upgrade-capture-secret-key-" + "Qm7tZ" * 8
CREDENTIAL_DIGEST_KEY = "upgrade-capture-digest-key-" + "r4Wn9" * 8
API_TOKEN_KEY = "5f0c1d2e3a4b59687766554433221100ffeeddcc"
SYSTEM_KEY = "NETH-0A1B-2C3D-4E5F-6071-8293-A4B5-C6D7-E8F9"
SYSTEM_SECRET = "my_0123456789abcdef0123.known-secret-of-the-upgrade-capture-system"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG8nM6pJbTq0b3Jd0J3oG0u5Yj2m4y6cVqk3K8xv1c2Z"

# Dropped by fleet_app 0006_api_tokens_hashed once each key is a knox row.
MOVED = {"authtoken_token": "knox_authtoken"}
# Rows that change by design: migrate records the migrations it applies, and the role
# groups' grants are derived from the permission table on every migrate
# (fleet_app.roles.roles_sync), so they are the table's, not the release's. Any other
# group's grants are data and are kept.
DERIVED_TABLES = {"django_migrations"}
ROLE_GRANTS = "auth_group_permissions"

# Run in a fresh interpreter on the upgraded database: the API and the heartbeat as a
# client reaches them, with the credentials the release issued, and wrong ones.
PROBE = """
import base64, json, os, django
django.setup()
from django.test import Client

token, key, secret = os.environ["PROBE_TOKEN"], os.environ["PROBE_KEY"], os.environ["PROBE_SECRET"]

def basic(key, secret):
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()

client = Client()
api = client.get("/api/systems/", HTTP_AUTHORIZATION=f"Token {token}")
wrong_api = client.get("/api/systems/", HTTP_AUTHORIZATION=f"Token {token[:-1]}0")
heartbeat = client.post("/collect/api/systems/heartbeat", HTTP_AUTHORIZATION=basic(key, secret))
wrong = client.post("/collect/api/systems/heartbeat", HTTP_AUTHORIZATION=basic(key, secret + "x"))
print(json.dumps({
    "api": api.status_code,
    "api_body": api.content.decode(),
    "wrong_api": wrong_api.status_code,
    "heartbeat": heartbeat.status_code,
    "wrong_heartbeat": wrong.status_code,
}))
"""


def server_url(database: str) -> str:
    db = settings.DATABASES["default"]
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{database}"


def admin_execute(statement: str) -> None:
    import psycopg

    with psycopg.connect(server_url("postgres"), autocommit=True) as conn:
        conn.execute(statement)


def tables_snapshot(url: str) -> dict[str, dict[str, dict]]:
    """Every table of the public schema: its rows as JSON, by primary key."""
    import psycopg

    snapshot = {}
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT c.oid, c.relname, array_agg(a.attname ORDER BY a.attnum)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)"
            " WHERE n.nspname = 'public' AND c.relkind = 'r' GROUP BY c.oid, c.relname"
        ).fetchall()
        for _, table, pk in tables:
            key = " || '/' || ".join(f'"{column}"::text' for column in pk)
            rows = conn.execute(f'SELECT {key}, to_jsonb(t) FROM "{table}" t').fetchall()  # noqa: S608
            snapshot[table] = dict(rows)
        unkeyed = conn.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            " AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)"
        ).fetchall()
    assert not unkeyed, f"tables without a primary key cannot be compared: {unkeyed}"
    return snapshot


def current_tree(url: str, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    """Run this tree in a fresh interpreter on ``url``, as a deployment would."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DEBUG", "REDIS_URL", "CELERY_BROKER_URL", "ALLOWED_HOSTS"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        DATABASE_URL=url,
        SECRET_KEY=SECRET_KEY,
        CREDENTIAL_DIGEST_KEY=CREDENTIAL_DIGEST_KEY,
        ALLOWED_HOSTS="testserver",
        **extra_env,
    )
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def release_database():
    """A database loaded from the release dump; dropped afterwards, whatever happened."""
    name = f"upgrade_{uuid.uuid4().hex[:12]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    url = server_url(name)
    try:
        # psql, not a driver: pg_dump (15.14, 16.10, 17.6 and later) fences the dump with
        # \restrict meta-commands only psql understands.
        loaded = subprocess.run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", "-d", url, "-f", str(DUMP)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert loaded.returncode == 0, loaded.stderr
        yield url
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rows_not_kept(before: dict, after: dict) -> tuple[dict, dict]:
    """``(lost, changed)``: primary keys gone per table, and per row the columns (present
    in both schemas) whose value is not what it was."""
    role_groups = {
        str(row["id"]) for row in after["auth_group"].values() if row["name"] in ALL_ROLES
    }
    lost, changed = {}, {}
    for table, rows in before.items():
        if table in MOVED or table in DERIVED_TABLES:
            continue
        if table == ROLE_GRANTS:
            rows = {pk: r for pk, r in rows.items() if str(r["group_id"]) not in role_groups}
        kept = after.get(table, {})
        if missing := sorted(set(rows) - set(kept)):
            lost[table] = missing
        for pk, row in rows.items():
            now = kept.get(pk, {})
            diff = {c: (row[c], now[c]) for c in row.keys() & now.keys() if row[c] != now[c]}
            if diff:
                changed[f"{table}/{pk}"] = diff
    return lost, changed


def test_it_keeps_every_row_of_the_release(release_database):
    before = tables_snapshot(release_database)
    assert all(before.values()), [table for table, rows in before.items() if not rows]

    current_tree(release_database, "manage.py", "migrate", "--noinput")
    after = tables_snapshot(release_database)

    counts = {table: (len(before[table]), len(after.get(table, {}))) for table in before}
    lost, changed = rows_not_kept(before, after)
    assert not lost, (lost, counts)
    assert not changed, changed

    # Each legacy key is a knox row of the same user, created when the key was.
    for old, new in MOVED.items():
        assert old not in after, f"{old} should be dropped once its rows moved to {new}"
        assert len(after[new]) == len(before[old])
        assert sorted((r["user_id"], r["created"]) for r in after[new].values()) == sorted(
            (r["user_id"], r["created"]) for r in before[old].values()
        )

    # The storage hosts lost their worker-side columns (key_path, zfs_path, zpool_path,
    # local), not where and as whom they are reached.
    hosts = {row["name"]: row for row in after["backups_app_storagehost"].values()}
    assert set(hosts) == {"tank-a", "backup-local"}
    tank = hosts["tank-a"]
    assert (tank["address"], tank["port"], tank["user"]) == ("10.0.0.5", 2222, "zfsop")
    assert tank["host_key"] == HOST_KEY
    assert "key_path" not in tank

    # Each organization got a slug of its own, the two "Acme" ones included.
    slugs = [row["slug"] for row in after["fleet_app_organization"].values()]
    assert len(set(slugs)) == len(slugs) == len(before["fleet_app_organization"])

    probed = current_tree(
        release_database,
        "-c",
        PROBE,
        PROBE_TOKEN=API_TOKEN_KEY,
        PROBE_KEY=SYSTEM_KEY,
        PROBE_SECRET=SYSTEM_SECRET,
    )
    probe = json.loads(probed.stdout.strip().splitlines()[-1])
    assert probe["api"] == 200, probe
    assert SYSTEM_KEY in probe["api_body"]
    assert probe["wrong_api"] == 401
    assert probe["heartbeat"] == 200, probe
    assert probe["wrong_heartbeat"] == 401
