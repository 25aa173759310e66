"""The inventory inbox drained by real Celery workers: a worker killed mid-batch loses and
repeats nothing, two workers keep each system's order, and the inbox drains once a broker
that went away is back (a Redis server of this test's own, stopped and started again)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest
from celery import Celery
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from fleet_app import services
from fleet_app.demo import ns8_inventory
from fleet_app.models import Inventory, InventoryInbox
from tests.conftest import wait_for
from tests.factories import make_system

DRAIN = "fleet_app.tasks.inventory_inbox_drain"

pytestmark = pytest.mark.timeout(120)


def _need_real_services():
    if connection.vendor != "postgresql" or not django_settings.REDIS_URL:
        message = "real workers need DATABASE_URL (PostgreSQL) and REDIS_URL"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def _env(broker: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": broker,
        "CELERY_BROKER_URL": broker,
        "CONN_MAX_AGE": "0",
        **extra,
    }


def _worker(log: Path, queue: str, broker: str, **extra: str) -> subprocess.Popen:
    """A real Celery worker (solo pool: the process that runs the task is this one)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--pool", "solo",
         "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "INFO", "--logfile", str(log)],
        env=_env(broker, **extra), cwd=django_settings.BASE_DIR,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while "ready" not in (log.read_text() if log.exists() else ""):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the Celery worker did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _sender(broker: str) -> Celery:
    """A Celery app of this test's own: the shared app's connections are never touched."""
    return Celery("inbox-test", broker=broker, set_as_current=False)


def _accept(systems, rounds: int, modules: int = 8) -> list[tuple[int, int]]:
    """``rounds`` inventories per system, interleaved; each carries its sequence number."""
    sent = []
    for n in range(rounds):
        for system in systems:
            payload = ns8_inventory(seed=n, modules=modules)
            payload["uuid"] = f"seq-{n:04d}"
            body = orjson.dumps(payload)
            services.inventory_accept(system=system, body=body)
            sent.append((system.pk, n))
    return sent


def _recorded_in_order(systems, rounds: int) -> None:
    for system in systems:
        seqs = list(
            Inventory.objects.filter(system=system)
            .order_by("pk")
            .values_list("data__uuid", flat=True)
        )
        assert seqs == [f"seq-{n:04d}" for n in range(rounds)], system.pk


def test_a_worker_killed_mid_batch_loses_no_row_and_records_none_twice(transactional_db, tmp_path):
    _need_real_services()
    systems = [make_system(None, name=f"kill-{n}") for n in range(3)]
    rounds = 4
    _accept(systems, rounds)
    accepted = set(InventoryInbox.objects.values_list("system_id", "received_at", "digest"))
    assert len(accepted) == 12
    queue = f"test-{uuid.uuid4().hex[:8]}"
    broker = django_settings.REDIS_URL
    # Hold the row of the third system: the worker records the batch's first two
    # inventories, then waits on the lock at the third — mid-batch, its transaction open.
    blocker = psycopg.connect(_database_url().replace("postgres://", "postgresql://"))
    blocked = systems[2].pk
    blocker.execute("SELECT 1 FROM fleet_app_system WHERE id = %s FOR UPDATE", [blocked])
    worker = _worker(tmp_path / "w1.log", queue, broker, INVENTORY_INBOX_BATCH="50")
    try:
        _sender(broker).send_task(DRAIN, queue=queue)

        def waiting_on_the_lock() -> bool:
            # Asked on the test's own connection: the blocker's transaction would see one
            # snapshot of pg_stat_activity.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE %s AND datname = current_database()",
                    ['UPDATE "fleet_app_system"%'],
                )
                return bool(cursor.fetchone()[0])

        assert wait_for(waiting_on_the_lock, timeout=40), (tmp_path / "w1.log").read_text()
        assert Inventory.objects.count() == 0  # nothing of the batch is committed
        with connection.cursor() as cursor:
            # The worker's session, the one waiting on the lock: other tests' leftover
            # sessions are not this test's concern.
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE %s",
                ['UPDATE "fleet_app_system"%'],
            )
            worker_sessions = [pid for (pid,) in cursor.fetchall()]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        _stop(worker)
        blocker.rollback()
        blocker.close()
    # The dead worker's backend finds its client gone and rolls the batch back.
    assert wait_for(
        lambda: (
            not Inventory.objects.exists()
            and InventoryInbox.objects.count() == 12
            and not _sessions_left(worker_sessions)
        ),
        timeout=30,
    )

    second = _worker(tmp_path / "w2.log", queue, broker)
    try:
        _sender(broker).send_task(DRAIN, queue=queue)
        assert wait_for(lambda: not InventoryInbox.objects.exists(), timeout=40)
    finally:
        _stop(second)

    recorded = list(Inventory.objects.values_list("system_id", "received_at", "body_digest"))
    assert len(recorded) == 12
    assert set(recorded) == accepted
    _recorded_in_order(systems, rounds)


def _sessions_left(pids: list[int]) -> int:
    """How many of these sessions (the dead worker's) the server still holds."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
        return cursor.fetchone()[0]


def test_two_workers_keep_each_systems_order(transactional_db, tmp_path):
    _need_real_services()
    systems = [make_system(None, name=f"order-{n}") for n in range(4)]
    rounds = 25
    _accept(systems, rounds, modules=2)
    queue = f"test-{uuid.uuid4().hex[:8]}"
    broker = django_settings.REDIS_URL
    # Small batches, so that the two workers take turns on the same systems.
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    workers = [_worker(log, queue, broker, INVENTORY_INBOX_BATCH="3") for log in logs]
    try:
        sender = _sender(broker)
        sender.send_task(DRAIN, queue=queue)
        sender.send_task(DRAIN, queue=queue)
        assert wait_for(lambda: not InventoryInbox.objects.exists(), timeout=60)
        assert wait_for(lambda: all("succeeded" in log.read_text() for log in logs), timeout=20)
    finally:
        for worker in workers:
            _stop(worker)

    assert Inventory.objects.count() == 4 * rounds
    _recorded_in_order(systems, rounds)
    # Both took part (each logs what it recorded).
    for log in logs:
        assert "'processed': 0," not in log.read_text(), log.read_text()


def _redis(port: int, workdir: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    assert wait_for(lambda: _pings(client), timeout=10)
    return process


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_inbox_drains_once_the_broker_is_back(transactional_db, tmp_path):
    """A worker and beat on a Redis of their own; Redis stops, inventories arrive (the
    collect API never needs the broker), Redis comes back: beat's sweep drains them."""
    _need_real_services()
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed to stop and restart a broker")
    port = _free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    redis_server = _redis(port, tmp_path)
    worker = beat = None
    try:
        worker = _worker(tmp_path / "worker.log", "celery", broker)
        beat_log = tmp_path / "beat.log"
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", "beat",
             "-S", "celery.beat:PersistentScheduler", "-s", str(tmp_path / "beat-schedule"),
             "--loglevel", "INFO", "--logfile", str(beat_log)],
            env=_env(broker, INVENTORY_INBOX_SWEEP_SECONDS="1"), cwd=django_settings.BASE_DIR,
        )  # fmt: skip
        assert wait_for(lambda: beat_log.exists() and "beat: Starting" in beat_log.read_text())

        redis_server.terminate()
        redis_server.wait(timeout=10)
        systems = [make_system(None, name=f"outage-{n}") for n in range(2)]
        _accept(systems, 3, modules=2)
        time.sleep(2.5)  # two sweeps' worth: nothing can reach the worker
        assert InventoryInbox.objects.count() == 6
        assert not Inventory.objects.exists()

        redis_server = _redis(port, tmp_path)
        assert wait_for(lambda: not InventoryInbox.objects.exists(), timeout=60), (
            tmp_path / "worker.log"
        ).read_text()[-3000:] + beat_log.read_text()[-3000:]
    finally:
        for process in (beat, worker):
            if process is not None:
                _stop(process)
        _stop(redis_server)

    assert Inventory.objects.count() == 6
    _recorded_in_order(systems, 3)


def test_a_row_accepted_after_the_nudge_is_drained_by_the_lingering_task(
    transactional_db, tmp_path
):
    """The collect API nudges at most once per interval, so a row accepted right after a
    nudge sends none: the task that nudge started stays for one interval once the inbox
    is empty, and records the row without waiting for beat's sweep (no beat runs here)."""
    _need_real_services()
    system = make_system(None, name="linger")
    queue = f"test-{uuid.uuid4().hex[:8]}"
    broker = django_settings.REDIS_URL
    log = tmp_path / "worker.log"
    worker = _worker(log, queue, broker, INVENTORY_INBOX_NUDGE_SECONDS="4")
    try:
        _sender(broker).send_task(DRAIN, queue=queue)  # the nudge, on an empty inbox
        assert wait_for(lambda: "received" in log.read_text(), timeout=20)
        time.sleep(1)  # the task has found the inbox empty and is lingering
        assert "succeeded" not in log.read_text()  # it has not returned yet
        body = orjson.dumps(ns8_inventory(seed=1, modules=2))
        # The row of an accept whose nudge was held back: no task is sent for it.
        InventoryInbox.objects.create(
            system=system, received_at=timezone.now(), body=body, size=len(body), digest="0" * 64
        )
        assert wait_for(lambda: not InventoryInbox.objects.exists(), timeout=10), log.read_text()[
            -3000:
        ]
        assert Inventory.objects.filter(system=system).count() == 1
    finally:
        _stop(worker)
