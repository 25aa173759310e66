"""Fleet-scale parts of the ingest benchmark: a million systems seeded in bulk, loads from
many distinct systems (an offered rate, a wave), a real drain worker, and what the
database recorded.

Credentials are derived from a system's number (``fleet_credentials``), so the seed and
the load generator agree without holding a million secrets in memory twice; the digests
are the product's own (``fleet_app.credentials.digest``), so the server checks them as
it checks any system's.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, SERVER_ENV, run
from server import BIN, worker_stop  # noqa: F401 (ingest_phases imports it from here)

FLEET_LUA = ROOT / "bench" / "fleet.lua"
# Seeded systems are numbered from here, far from anything the product generates.
FIRST_NUMBER = 10_000_000


def fleet_credentials(number: int) -> tuple[str, str, str]:
    """``(system_key, secret_public, secret)`` of seeded system ``number``, in the
    product's formats (``NETH-`` and eight groups of four hex digits; ``my_<public>.<rest>``)."""
    raw = f"{number:032X}"
    key = "NETH-" + "-".join(raw[i : i + 4] for i in range(0, 32, 4))
    public = f"{number:020x}"
    return key, public, f"my_{public}.fleet{number:x}seeded"


def basic_header(number: int) -> str:
    key, _, secret = fleet_credentials(number)
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


def fleet_grow(total: int) -> int:
    """Add systems until the table holds ``total``: each a copy of the first seeded system
    (same customer, registered, confirmed, heard from earlier today, an activity day today
    and one small earlier inventory) with its own key, secret digest and name. Returns how
    many were added; their numbers are FIRST_NUMBER onwards."""
    from django.db import connection

    from fleet_app import credentials
    from fleet_app.models import Inventory, System, SystemActivityDay

    systems, days, inventories = (
        System._meta.db_table,
        SystemActivityDay._meta.db_table,
        Inventory._meta.db_table,
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), min(id) FROM {systems}")  # noqa: S608
        have, template = cursor.fetchone()
        add = max(0, total - have)
        if not add:
            return 0
        cursor.execute(
            "CREATE TEMP TABLE fleet_seed (n bigint, system_key varchar, secret_public varchar,"
            " secret_digest varchar, name varchar)"
        )
        with cursor.cursor.copy("COPY fleet_seed FROM STDIN") as copy:
            for n in range(FIRST_NUMBER, FIRST_NUMBER + add):
                key, public, secret = fleet_credentials(n)
                copy.write_row((n, key, public, credentials.digest(secret), f"fleet-{n}"))
        cursor.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = %s AND column_name <> 'id' ORDER BY ordinal_position",
            [systems],
        )
        columns = [name for (name,) in cursor.fetchall()]
        own = {"system_key", "secret_public", "secret_digest", "name"}
        chosen = ", ".join(f"s.{c}" if c in own else f"t.{c}" for c in columns)
        cursor.execute(
            f"INSERT INTO {systems} ({', '.join(columns)})"  # noqa: S608
            f" SELECT {chosen} FROM fleet_seed s CROSS JOIN {systems} t WHERE t.id = %s"
            " ORDER BY s.n",
            [template],
        )
        cursor.execute(
            f"INSERT INTO {days} (system_id, day)"  # noqa: S608
            f" SELECT x.id, d.day FROM {systems} x"
            f" CROSS JOIN (SELECT day FROM {days} WHERE system_id = %s LIMIT 1) d"
            " WHERE x.name LIKE 'fleet-%%' ON CONFLICT DO NOTHING",
            [template],
        )
        cursor.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = %s AND column_name NOT IN ('id', 'system_id', 'data', 'size')"
            " ORDER BY ordinal_position",
            [inventories],
        )
        kept = [name for (name,) in cursor.fetchall()]
        small = '{"facts": {"nodes": {"1": {"version": "ns8"}}}}'
        cursor.execute(
            f"INSERT INTO {inventories} (system_id, data, size, {', '.join(kept)})"  # noqa: S608
            f" SELECT x.id, %s::jsonb, %s, {', '.join('i.' + c for c in kept)}"
            f" FROM {systems} x CROSS JOIN (SELECT * FROM {inventories} WHERE system_id = %s"
            " ORDER BY id DESC LIMIT 1) i WHERE x.name LIKE 'fleet-%%'",
            [small, len(small), template],
        )
        cursor.execute(f"ANALYZE {systems}; ANALYZE {days}; ANALYZE {inventories}")
    return add


def auth_file(path: Path, numbers: Iterable[int]) -> Path:
    path.write_text("".join(basic_header(n) + "\n" for n in numbers))
    return path


# --- the load generator -------------------------------------------------------------------


@dataclass
class FleetLoad:
    """What one fleet.lua run measured."""

    requests: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int] = field(default_factory=dict)
    socket_errors: str = ""

    def count(self, predicate) -> int:
        return sum(n for code, n in self.statuses.items() if predicate(code))


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def fleet_wrk(
    url: str,
    auths: Path,
    *,
    mode: str,
    rate: float,
    threads: int,
    connections: int,
    seconds: float,
    body: Path | None = None,
    placeholder: str = "",
    stop_when=None,
) -> FleetLoad:
    """Run fleet.lua for up to ``seconds``; ``stop_when()`` (polled) ends it earlier with
    SIGINT, after which wrk prints its figures as at the end of a run."""
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(seconds)}s",
        "--latency",
        "--timeout",
        "30s",
        "-s",
        str(FLEET_LUA),
        url,
        "--",
        str(auths),
        mode,
        f"{rate:g}",
        str(threads),
    ]
    if body is not None:
        command += [str(body), placeholder]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if stop_when is not None:
        while process.poll() is None:
            if stop_when():
                process.send_signal(signal.SIGINT)
                break
            time.sleep(0.25)
    out, err = process.communicate(timeout=seconds + 60)
    elapsed = time.monotonic() - started
    if process.returncode not in (0, -signal.SIGINT):
        raise SystemExit(f"wrk failed ({process.returncode}): {err[-500:]}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    statuses = {
        int(code): int(n) for code, n in re.findall(r"^status (\d+) (\d+)$", out, re.MULTILINE)
    }
    percentile = {
        p: _ms(m.group(1))
        for p in ("50", "99")
        if (m := re.search(rf"^\s+{p}%\s+(\S+)", out, re.MULTILINE))
    }
    errors = re.search(r"Socket errors: (.*)", out)
    return FleetLoad(
        requests,
        elapsed,
        requests / elapsed if elapsed else 0.0,
        percentile.get("50", 0.0),
        percentile.get("99", 0.0),
        statuses,
        errors.group(1) if errors else "",
    )


# --- what the database holds ---------------------------------------------------------------


def recorded_since(numbers: range, since) -> set[int]:
    """The seeded systems among ``numbers`` whose heartbeat is at or after ``since``."""
    from django.db import connection

    from fleet_app.models import System

    first, last = fleet_credentials(numbers.start)[0], fleet_credentials(numbers.stop - 1)[0]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT system_key FROM {System._meta.db_table}"  # noqa: S608
            " WHERE system_key BETWEEN %s AND %s AND last_heartbeat_at >= %s",
            [first, last, since],
        )
        keys = {key for (key,) in cursor.fetchall()}
    return {n for n in numbers if fleet_credentials(n)[0] in keys}


def inbox_state() -> tuple[int, float]:
    """Pending inbox rows and the age in seconds of the oldest (0 when empty)."""
    from django.db import connection

    from fleet_app.models import InventoryInbox

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(received_at)), 0)"  # noqa: S608
            f" FROM {InventoryInbox._meta.db_table} WHERE failed_at IS NULL"
        )
        count, age = cursor.fetchone()
    return int(count), float(age)


class InboxWatch:
    """Samples the inbox every ``every`` seconds in a thread: the largest depth and the
    largest age of its oldest row (how long the longest-waiting inventory had waited)."""

    def __init__(self, every: float = 0.25):
        self.every = every
        self.max_depth = 0
        self.max_age = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        while not self._stop.is_set():
            depth, age = inbox_state()
            self.max_depth, self.max_age = max(self.max_depth, depth), max(self.max_age, age)
            self._stop.wait(self.every)
        connection.close()

    def __enter__(self) -> InboxWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def worker_start(log: Path, concurrency: int = 1) -> subprocess.Popen:
    """One real Celery worker process (prefork, ``concurrency`` children) on the
    benchmark's database and broker."""
    env = {**os.environ, **SERVER_ENV, "DEBUG": "0", "LOG_LEVEL": "WARNING"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                str(BIN / "celery"),
                "-A",
                "controlplane",
                "worker",
                "-c",
                str(concurrency),
                "--without-gossip",
                "--without-mingle",
                "-l",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process


def task_send(name: str) -> None:
    """Send the task ``name`` (no arguments) through the benchmark's broker."""
    from controlplane.celery import app

    app.send_task(name)


def broker_flush(redis_url: str) -> None:
    """Empty the benchmark's broker database: tasks sent before the measured phase (the
    inbox nudges) must not count."""
    run(["redis-cli", "-u", redis_url, "FLUSHDB"])
