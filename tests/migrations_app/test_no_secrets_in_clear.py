"""After a whole cutover, a dump of the database and every log line hold none of the
secrets or legacy tokens that were issued or sent (issue requirement).

The test commits for real (``transactional_db``) so ``pg_dump`` sees the rows, logs at
DEBUG with SQL and its parameters, and then searches the dump, the log records, the
process's own stdout/stderr and the import command's output for every secret: each whole
system secret and its random part, each legacy token (right and wrong ones), the Basic
headers that carried them, and a staff password.
"""

import base64
import io
import json
import logging
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from fleet_app import credentials
from fleet_app.demo import ns8_inventory
from fleet_app.models import System
from migrations_app.models import LegacyMapping
from tests.conftest import basic_auth
from tests.factories import UserFactory

PASSWORD = "correct horse battery staple 42"
CREDENTIALS = "/proxy/credentials"
FREEKEY = "/api/Utils/freekey"
REGISTER = "/backend/api/systems/register"
HEARTBEAT = "/collect/api/systems/heartbeat"
INVENTORY = "/collect/api/systems/inventory"


def _pg_dump_binary() -> str:
    """The pg_dump of the server's major version (pg_dump refuses a newer server)."""
    major = connection.pg_version // 10000
    versioned = Path(f"/usr/lib/postgresql/{major}/bin/pg_dump")
    if versioned.exists():
        return str(versioned)
    found = shutil.which("pg_dump")
    if found is None:
        pytest.fail("pg_dump is not installed")
    return found


def _pg_dump() -> str:
    db = connection.settings_dict
    env = {**os.environ}
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = db["PASSWORD"]
    command = [_pg_dump_binary(), "--data-only", "--inserts", "--no-owner"]
    for flag, key in (("-h", "HOST"), ("-p", "PORT"), ("-U", "USER")):
        if db.get(key):
            command += [flag, str(db[key])]
    command.append(db["NAME"])
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _basic_header_value(user: str, secret: str) -> str:
    return base64.b64encode(f"{user}:{secret}".encode()).decode()


class Secrets:
    """Every secret the test hands out or sends, with a label to name it in a failure."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def add(self, label: str, value: str) -> str:
        assert value, label
        self.items[label] = value
        return value

    def system_secret(self, label: str, value: str) -> str:
        assert value.startswith(credentials.SECRET_PREFIX), value
        self.add(label, value)
        # The random part after the dot (the part before it is stored by design).
        self.add(f"{label} (random part)", value.partition(".")[2])
        return value

    def found_in(self, text: str) -> list[str]:
        return [label for label, value in self.items.items() if value in text]


@pytest.fixture
def sql_logged(settings, caplog):
    """Everything at DEBUG, including each SQL statement with its parameters."""
    settings.DEBUG = True  # the database backend logs queries only when DEBUG is on
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    previous = connection.force_debug_cursor
    connection.force_debug_cursor = True
    yield caplog
    connection.force_debug_cursor = previous


@pytest.fixture
def postgresql(transactional_db):
    if connection.vendor != "postgresql":
        message = "the dump is taken with pg_dump: needs DATABASE_URL (PostgreSQL)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_no_secret_or_legacy_token_is_in_the_dump_or_the_logs(
    postgresql, customer, celery_eager, sql_logged, capfd, tmp_path
):
    caplog = sql_logged
    issued = Secrets()
    from django.core.cache import cache

    cache.clear()  # throttle counters of earlier tests

    # --- Staff log in with a password (it authenticates someone: it must not leak either).
    alice = UserFactory(email="alice@example.com", organization=customer, roles=["admin"])
    alice.set_password(issued.add("alice's password", PASSWORD))
    alice.save(update_fields=["password"])
    staff = Client()
    login = staff.post(
        reverse("admin:login") + "?next=/admin/", {"username": alice.email, "password": PASSWORD}
    )
    assert login.status_code == 302, login.content

    # --- Import the legacy mappings with their tokens (a dry run, then for real).
    tokens = {
        f"LEGACY-{n}": issued.add(f"legacy token {n}", secrets.token_hex(20)) for n in (1, 2, 3)
    }
    export = tmp_path / "proxy_mappings.csv"
    export.write_text(
        "legacy_system_id,legacy_token,name,organization\n"
        + "".join(f"{lid},{tok},cluster {lid},{customer.pk}\n" for lid, tok in tokens.items())
    )
    command_output = io.StringIO()
    for args in ((), ("--apply",)):
        call_command(
            "import_legacy_mappings",
            str(export),
            *args,
            stdout=command_output,
            stderr=command_output,
        )
    assert "Imported 3 mapping(s)" in command_output.getvalue()

    # --- The legacy cluster LEGACY-1 rotates: the first response is lost, it asks again.
    device = Client()

    def credentials_of(legacy_id: str, token: str):
        return device.get(CREDENTIALS, HTTP_AUTHORIZATION=basic_auth(legacy_id, token))

    lost = credentials_of("LEGACY-1", tokens["LEGACY-1"])
    retried = credentials_of("LEGACY-1", tokens["LEGACY-1"])
    assert lost.status_code == retried.status_code == 200
    first = lost.json()["data"]
    second = retried.json()["data"]
    issued.system_secret("LEGACY-1 secret, lost response", first["system_secret"])
    issued.system_secret("LEGACY-1 secret, retried", second["system_secret"])
    key = second["system_key"]

    def native(secret: str) -> dict:
        return {"HTTP_AUTHORIZATION": basic_auth(key, secret)}

    # Both answers stay valid until one is used; the first used wins, the other dies.
    assert device.post(HEARTBEAT, **native(second["system_secret"])).status_code == 200
    assert device.post(HEARTBEAT, **native(first["system_secret"])).status_code == 401
    inventory = ns8_inventory(
        seed=5, modules=3, from_legacy_system_id="LEGACY-1", migrated_at="2026-11-20T10:00:00Z"
    )
    sent = device.post(
        INVENTORY,
        json.dumps(inventory),
        content_type="application/json",
        **native(second["system_secret"]),
    )
    assert sent.status_code == 202, sent.content

    # A wrong legacy token, and a wrong freekey secret: sent, refused, never written down.
    wrong = issued.add("wrong legacy token", secrets.token_hex(20))
    assert credentials_of("LEGACY-1", wrong).status_code == 401
    wrong_freekey = issued.add("wrong freekey secret", secrets.token_hex(20))
    assert device.post(FREEKEY, {"lk": "LEGACY-2", "secret": wrong_freekey}).status_code == 401

    # The cluster lost its native credentials: staff re-open the mapping, it rotates again.
    mapping = LegacyMapping.objects.get(legacy_system_id="LEGACY-1")
    reopened = staff.post(
        reverse("admin:migrations_app_legacymapping_changelist"),
        {"action": "reopen", "_selected_action": [mapping.pk], "index": 0, "confirmed": "yes"},
    )
    assert reopened.status_code == 302
    third = credentials_of("LEGACY-1", tokens["LEGACY-1"]).json()["data"]
    issued.system_secret("LEGACY-1 secret, after re-open", third["system_secret"])
    assert device.post(HEARTBEAT, **native(third["system_secret"])).status_code == 200

    # The cluster unregisters: it frees its legacy slot with the preserved legacy pair.
    freed = device.post(FREEKEY, {"lk": "LEGACY-1", "secret": tokens["LEGACY-1"]})
    assert freed.status_code == 200, freed.content

    # LEGACY-2 rotates and claims another cluster's legacy id (an anomaly is recorded).
    other = credentials_of("LEGACY-2", tokens["LEGACY-2"]).json()["data"]
    issued.system_secret("LEGACY-2 secret", other["system_secret"])
    claim = ns8_inventory(seed=6, modules=3, from_legacy_system_id="LEGACY-3")
    device.post(
        INVENTORY,
        json.dumps(claim),
        content_type="application/json",
        HTTP_AUTHORIZATION=basic_auth(other["system_key"], other["system_secret"]),
    )

    # --- Staff create a native system (its secret is shown once) and re-issue the secret.
    created = staff.post(
        reverse("admin:fleet_app_system_add"),
        {"organization": customer.pk, "name": "edge-fw", "type": "nethsecurity"},
        follow=True,
    )
    assert created.status_code == 200
    shown = created.context["issued"][0].system_secret
    assert shown in created.content.decode()
    issued.system_secret("secret shown on creation", shown)
    native_system = System.objects.get(name="edge-fw")
    reissued = staff.post(
        reverse("admin:fleet_app_system_changelist"),
        {
            "action": "reissue_secret",
            "_selected_action": [native_system.pk],
            "index": 0,
            "confirmed": "yes",
        },
        follow=True,
    )
    assert reissued.status_code == 200
    fresh = reissued.context["issued"][0].system_secret
    issued.system_secret("re-issued secret", fresh)

    def register(secret: str):
        return device.post(
            REGISTER, json.dumps({"system_secret": secret}), content_type="application/json"
        )

    assert register(shown).status_code != 200  # re-issued: the first one is dead
    assert register(fresh).status_code == 200
    auth = basic_auth(native_system.system_key, fresh)
    assert device.post(HEARTBEAT, HTTP_AUTHORIZATION=auth).status_code == 200
    staff.get(reverse("admin:fleet_app_system_change", args=[native_system.pk]))
    staff.get(reverse("admin:migrations_app_legacymapping_change", args=[mapping.pk]))

    # The Basic headers that carried the secrets, as they travelled (base64).
    for label, value in list(issued.items.items()):
        if "random part" in label or "password" in label:
            continue
        for user in (*tokens, key, other["system_key"], native_system.system_key):
            issued.add(f"Basic header {user}:<{label}>", _basic_header_value(user, value))

    # --- Search everywhere.
    dump = _pg_dump()
    logs = caplog.text
    command_text = command_output.getvalue()
    captured = capfd.readouterr()
    process_output = captured.out + captured.err
    # Session data is signed and compressed, so a secret in it would not show in the dump.
    sessions = "\n".join(json.dumps(s.get_decoded(), default=str) for s in Session.objects.all())
    cookies = "\n".join(str(morsel.value) for morsel in staff.cookies.values())

    # Not vacuous: the dump and the logs hold the rows and the SQL they were searched for.
    rotated = LegacyMapping.objects.select_related("system").get(legacy_system_id="LEGACY-1")
    assert "LEGACY-1" in dump and rotated.system.system_key in dump
    assert native_system.system_key in dump
    assert credentials.digest(tokens["LEGACY-1"]) in dump  # the token is there as a digest
    assert credentials.system_secret_public_part(fresh) in dump  # the lookup part, by design
    assert "mapping.reopen" in dump and "proxy_mappings" in dump
    assert 'INSERT INTO "proxy_mappings"' in logs and "LEGACY-2" in logs
    assert native_system.system_key in logs
    assert rotated.released_at is not None and rotated.fingerprint_at is not None
    assert len(issued.items) > 40

    leaks = {
        "database dump": issued.found_in(dump),
        "log records": issued.found_in(logs),
        "import command output": issued.found_in(command_text),
        "process stdout/stderr": issued.found_in(process_output),
        "sessions": issued.found_in(sessions),
        "cookies": issued.found_in(cookies),
    }
    assert leaks == dict.fromkeys(leaks, []), leaks
