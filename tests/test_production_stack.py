"""The production stack without Docker: the image's entry point (docker/entrypoint.sh),
its settings (DEBUG off, the production checks) and its three processes (gunicorn, a
Celery worker, beat) on loopback against PostgreSQL and Redis. A system registers,
heartbeats, sends an inventory and uploads a cluster backup; beat starts a scheduled
backup of Cutover's own database and the drill task restores and verifies it, all seen
through the public endpoints. A missing production setting stops the start, named."""

import os
import re
import time
from pathlib import Path

import httpx
import pytest
from celery import Celery
from django.conf import settings
from django_celery_beat.models import IntervalSchedule
from knox.models import AuthToken

from backups_app.service_backups import schedules, services
from fleet_app.demo import ns8_inventory
from tests.conftest import needs_postgresql
from tests.e2e.instances import (
    A_KEY,
    HOST,
    Processes,
    entrypoint,
    free_port,
    needs_services,
    production_env,
)
from tests.factories import OrganizationFactory, UserFactory, make_system

pytestmark = needs_postgresql


class Stack(Processes):
    def __init__(self, tmp_path: Path):
        self.port = free_port()
        super().__init__(production_env(tmp_path, self.port), tmp_path)


@pytest.fixture
def stack(transactional_db, tmp_path, settings):
    needs_services()
    # Secrets the test issues are digested with the key the stack's processes use.
    settings.CREDENTIAL_DIGEST_KEY = A_KEY + "-credentials"
    # Messages earlier tests left on this broker's default queue are not this stack's.
    Celery("cutover-test", broker=settings.REDIS_URL, set_as_current=False).control.purge()
    stack = Stack(tmp_path)
    try:
        yield stack
    finally:
        stack.stop_all()


def test_the_production_stack_serves_ingests_backs_up_and_drills(stack):
    # Setup a staff operator would do in the admin: a system, an API token, a schedule.
    system = make_system(
        OrganizationFactory(name="Prod Org"), name="prod-cluster", registered=False
    )
    staff = UserFactory(email="root@cutover.test", is_superuser=True)
    _, token = AuthToken.objects.create(user=staff)
    service = services.service_create(
        actor=None, name="cutover-db", adapter="postgres", config={"alias": "default"}
    )
    every_2s, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    schedules.backup_schedule_create(actor=None, service=service, timing=every_2s, keep_count=2)

    migrated = entrypoint("migrate", env=stack.env, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    stack.start("web")
    stack.start("worker")
    stack.start("beat")
    # The compose healthcheck, against a server that checks the host (DEBUG off).
    stack.wait(
        "web's healthcheck", lambda: entrypoint("healthcheck", env=stack.env).returncode == 0
    )

    base = f"http://127.0.0.1:{stack.port}"
    # As Caddy passes requests on: the public host, https, the client's address.
    proxy = {"Host": HOST, "X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    staff_api = {**proxy, "Authorization": f"Token {token}"}
    with httpx.Client(base_url=base, headers=proxy, timeout=30) as http:
        assert http.get("/healthz", headers={"Host": "not-allowed.example"}).status_code == 400

        registered = http.post(
            "/backend/api/systems/register", json={"system_secret": system.issued_secret}
        )
        assert registered.status_code == 200, registered.text
        collect_url = registered.json()["data"]["collect_url"]
        assert collect_url == f"https://{HOST}/collect/api/systems"
        collect = collect_url.removeprefix(f"https://{HOST}")
        key = registered.json()["data"]["system_key"]
        auth = (key, system.issued_secret)

        heartbeat = http.post(f"{collect}/heartbeat", auth=auth)
        assert heartbeat.status_code == 200, heartbeat.text
        inventory = http.post(f"{collect}/inventory", auth=auth, json=ns8_inventory(seed=3))
        assert inventory.status_code == 202, inventory.text
        archive = os.urandom(256 * 1024)
        uploaded = http.post(
            f"{collect}/backups", auth=auth, content=archive,
            headers={"X-Filename": "cluster.tar.gz.gpg"},
        )  # fmt: skip
        assert uploaded.status_code == 201, uploaded.text

        # The inventory waits in the inbox until the worker's drain records it.
        deadline = time.monotonic() + 60
        while True:
            shown = http.get(f"/api/systems/{system.pk}/", headers=staff_api)
            assert shown.status_code == 200, shown.text
            row = shown.json()
            if row["last_inventory_at"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert row["last_heartbeat_at"] is not None and row["last_inventory_at"] is not None
        backups = http.get("/api/backups/cluster-backups/", headers=staff_api).json()["results"]
        assert [(b["filename"], b["size"]) for b in backups] == [
            ("cluster.tar.gz.gpg", len(archive))
        ]
        downloaded = http.get(f"/api/backups/cluster-backups/{backups[0]['id']}/download/",
                              headers=staff_api)  # fmt: skip
        assert downloaded.status_code == 200 and downloaded.content == archive

        def scheduled_backup():
            runs = http.get(
                "/api/backups/backup-runs/", params={"service": service.pk}, headers=staff_api
            ).json()["results"]
            failed = [run for run in runs if run["state"] == "failed"]
            assert not failed, failed
            return next((run for run in runs if run["state"] == "succeeded"), None)

        backup = stack.wait("the scheduled backup", scheduled_backup, timeout=90)
        assert backup["schedule"] is not None and backup["size"] > 0
        stack.stop("beat")  # the schedule has done its part; no more dumps while drilling

        # What beat sends every BACKUP_DRILL_EVERY_HOURS, sent now.
        Celery("cutover-test", broker=settings.REDIS_URL, set_as_current=False).send_task(
            "backups_app.tasks.restore_drills_start"
        )

        def drill():
            runs = http.get(
                "/api/backups/restore-runs/", params={"purpose": "drill"}, headers=staff_api
            ).json()["results"]
            done = [run for run in runs if run["state"] in {"succeeded", "failed"}]
            return done[0] if done else None

        drilled = stack.wait("the restore drill", drill, timeout=90)
        assert drilled["state"] == "succeeded", drilled
        assert drilled["verified"] is True
        overview = http.get("/api/backups/services/overview/", headers=staff_api).json()
        assert [(row["service"], row["drill_overdue"]) for row in overview] == [
            ("cutover-db", False)
        ]

    # The worker's compose healthcheck: this host's node answers a ping over the broker.
    pinged = entrypoint("healthcheck", "worker", env=stack.env)
    assert pinged.returncode == 0, pinged.stderr
    web_log = stack.log("web")
    assert not re.search(r'HTTP/1\.1" 5\d\d ', web_log), web_log
    assert "Internal Server Error" not in web_log


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        ("SECRET_KEY", "SECRET_KEY is not set"),
        ("ALLOWED_HOSTS", "ALLOWED_HOSTS is not set"),
        ("DATABASE_URL", "DATABASE_URL is not set"),
        ("REDIS_URL", "REDIS_URL is not set"),
        ("PUBLIC_BASE_URL", "PUBLIC_BASE_URL is not set"),
    ],
)
@pytest.mark.parametrize("process", ["web", "worker", "beat", "migrate"])
def test_a_missing_production_setting_stops_the_start_naming_it(tmp_path, process, unset, named):
    env = production_env(tmp_path, free_port())
    env[unset] = ""

    started = entrypoint(process, env=env)

    assert started.returncode == 78
    (line,) = started.stderr.strip().splitlines()
    assert line.startswith(f"Cutover will not start: {named}: set it to ")
    assert line.endswith(".")


def test_the_embedded_key_is_refused_with_one_sentence(tmp_path):
    from controlplane.production import EMBEDDED_SECRET_KEY

    env = production_env(tmp_path, free_port(), SECRET_KEY=EMBEDDED_SECRET_KEY)
    env.pop("CREDENTIAL_DIGEST_KEY")

    started = entrypoint("web", env=env)

    assert started.returncode == 78
    # Django was loaded for this check: its start-up log lines come first.
    (line,) = [line for line in started.stderr.splitlines() if "will not start" in line]
    assert line.startswith("Cutover will not start: SECRET_KEY is the embedded default")
    assert "Traceback" not in started.stderr


def test_debug_is_refused_in_production(tmp_path):
    started = entrypoint("worker", env=production_env(tmp_path, free_port(), DEBUG="1"))

    assert started.returncode == 78
    assert started.stderr.strip() == (
        "Cutover will not start: DEBUG is on: unset DEBUG (or set it to false) in production."
    )


def test_an_unknown_subcommand_says_what_there_is(tmp_path):
    started = entrypoint("serve", env=production_env(tmp_path, free_port()))

    assert started.returncode == 64
    assert "Unknown subcommand 'serve'" in started.stderr
    assert "web|worker|beat|migrate" in started.stderr
