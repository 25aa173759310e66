"""Heartbeat group commit: the concurrent heartbeats of a process are written in one
statement and one commit, each answered once its row is committed — so a heartbeat
answered 200 is in the database even when the web process is killed right after."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from fleet_app import hot, services
from fleet_app.errors import FleetError
from fleet_app.models import System, SystemActivityDay
from tests.conftest import basic_auth
from tests.factories import make_system

pytestmark = pytest.mark.timeout(120)


def _postgresql_only():
    if connection.vendor != "postgresql":
        message = "group commit is PostgreSQL's"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _beat_all_at_once(headers: list[str]) -> list:
    """Each header's heartbeat from its own thread, all released at the same moment;
    the answers (a Heartbeat or the FleetError raised), in order."""
    barrier = threading.Barrier(len(headers))
    answers: list = [None] * len(headers)

    def beat(index: int) -> None:
        try:
            barrier.wait()
            answers[index] = services.system_heartbeat(authorization=headers[index])
        except FleetError as error:
            answers[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=beat, args=(n,)) for n in range(len(headers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def test_concurrent_heartbeats_share_statements_and_answer_as_alone(
    transactional_db, customer, monkeypatch, settings
):
    _postgresql_only()
    settings.COLLECT_HEARTBEAT_FLUSH_MS = 20  # a generous window on a loaded test machine
    systems = [make_system(customer, name=f"beat-{n}") for n in range(10)]
    suspended, wrong = systems[-2], systems[-1]
    headers = [basic_auth(s.system_key, s.issued_secret) for s in systems[:-1]]
    headers.append(basic_auth(wrong.system_key, "my_" + "x" * 40))
    batches: list[int] = []
    lookups: list[int] = []
    real_write, real_look_up = hot._write, hot._look_up

    def counting_write(batch):
        batches.append(len(batch))
        return real_write(batch)

    def counting_look_up(entries):
        lookups.append(len(entries))
        return real_look_up(entries)

    monkeypatch.setattr(hot, "_write", counting_write)
    monkeypatch.setattr(hot, "_look_up", counting_look_up)

    # The full path: none is known to this process, and no secret is confirmed yet, so
    # the leader's look-up by key finds none and each authenticates on its own.
    first = _beat_all_at_once(headers)
    assert sum(lookups) == 10
    assert sum(batches) == 10 + 9  # ten looked up by key, nine written by id
    lookups.clear(), batches.clear()
    System.objects.filter(pk=suspended.pk).update(suspended_at=timezone.now())
    second = _beat_all_at_once(headers)  # the fast path, but one was suspended since
    # 9 known to the process (the suspended one's guarded UPDATE touches nothing), and
    # the wrong secret looked up by key: each written once, several per statement.
    assert sum(batches) == 9 + 1
    assert max(batches) > 1
    assert sum(lookups) == 1
    lookups.clear(), batches.clear()
    hot.forget_all()  # another process: its confirmed systems are looked up by key
    third = _beat_all_at_once(headers)
    assert sum(lookups) == 10 and max(lookups) > 1  # one SELECT for several keys
    # Ten by key; the suspended one and the wrong secret are not found by the look-up
    # and take the full path (which records nothing for them).
    assert sum(batches) == 10

    for answers in (first, second, third):
        assert [type(a).__name__ for a in answers[:8]] == ["Heartbeat"] * 8
        assert answers[9].message == "Invalid system credentials."
    assert type(first[8]).__name__ == "Heartbeat"
    assert second[8].message == third[8].message == "This system is suspended."
    for system, answer in zip(systems[:8], third[:8], strict=True):
        assert System.objects.get(pk=system.pk).last_heartbeat_at == answer.at
    assert SystemActivityDay.objects.count() == 9
    assert set(hot._known) == {s.system_key for s in systems[:8]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_heartbeat_answered_200_survives_a_kill_of_the_web_process(
    transactional_db, customer, tmp_path, settings
):
    _postgresql_only()
    # The server runs as in production (DEBUG off), which refuses the embedded keys.
    settings.CREDENTIAL_DIGEST_KEY = os.urandom(32).hex()
    systems = [make_system(customer, name=f"durable-{n}") for n in range(24)]
    db = connection.settings_dict
    port = _free_port()
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        "SECRET_KEY": os.urandom(32).hex(),
        "CREDENTIAL_DIGEST_KEY": settings.CREDENTIAL_DIGEST_KEY,
        "ALLOWED_HOSTS": "127.0.0.1",
        "DEBUG": "0",
        "COLLECT_HEARTBEAT_FLUSH_MS": "5",
    }
    gunicorn = Path(sys.executable).parent / "gunicorn"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(gunicorn), "controlplane.wsgi", "-w", "1", "--threads", "12",
             "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
            env=env, cwd=django_settings.BASE_DIR, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                httpx.get(base + "/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)

        answered: dict[int, str] = {}
        barrier = threading.Barrier(len(systems))

        def beat(system) -> None:
            header = basic_auth(system.system_key, system.issued_secret)
            barrier.wait()
            response = httpx.post(
                base + "/collect/api/systems/heartbeat",
                headers={"Authorization": header},
                timeout=30,
            )
            if response.status_code == 200:
                answered[system.pk] = response.json()["data"]["last_heartbeat"]

        threads = [threading.Thread(target=beat, args=(s,)) for s in systems]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        # The moment the last answer is in: the whole server, master and worker, killed.
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)

    assert len(answered) == len(systems), log.read_text()
    for system in systems:
        stored = System.objects.get(pk=system.pk).last_heartbeat_at
        assert stored is not None
        assert stored.isoformat().replace("+00:00", "Z")[:23] == answered[system.pk][:23]
