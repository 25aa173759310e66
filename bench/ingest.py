"""Ingest benchmark: how much do the heartbeat and inventory endpoints cost next to a bare view?

Creates a fresh PostgreSQL database, migrates it, seeds ~1000 registered systems with real
credentials (and one previous inventory each, so every inventory is diffed as in steady
state), starts gunicorn on loopback and measures, against that one server:

a) throughput with wrk (-t2 -c32) on GET /healthz (the bare baseline: touches nothing),
   POST heartbeat and POST inventory (~50 KB ns8 phonehome), rotating credentials over
   the fleet (bench/collect.lua);
   Beside them, two floors (bench/floor.py, routed only in this benchmark's server): the
   heartbeat's single-row UPDATE alone, and the inventory's body stored as it came in one
   INSERT, without authentication or parsing. Each does a strict subset of its endpoint's
   work, so its ratio to the bare view is the most that endpoint could reach here;
b) a fixed rate of 1,000 req/s with hey on the heartbeat and on the bare view, spread over
   many hey processes, one system credential each (hey sends one header set only).

It prints figures and the targets they are compared with; it never passes or fails.
Then it stops gunicorn and drops the database.

    make bench          # or: .venv/bin/python bench/ingest.py --help
"""

import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import (
    ROOT,
    SERVER_ENV,
    database_drop,
    database_recreate,
    run,
    scratch_parser,
    step,
    systems_seed,
)
from ingest_fleet import FIRST_NUMBER, auth_file, broker_flush, fleet_grow
from ingest_phases import (
    drain_rate,
    heartbeat_sustained,
    heartbeat_wave,
    inventory_visibility,
)
from ingest_report import Result, report, report_fleet
from server import (
    BARE,
    BIN,
    CpuProbe,
    free_port,
    gunicorn_start,
    gunicorn_stop,
    machine_busy,
    wait_ready,
)

LUA = ROOT / "bench" / "collect.lua"
# Every node's uptime in the posted inventory is this number; the Lua script replaces it
# by a counter so each inventory differs from the previous one by a few values.
UPTIME_PLACEHOLDER = "987654321"

HEARTBEAT = "/collect/api/systems/heartbeat"
INVENTORY = "/collect/api/systems/inventory"
FLOOR_UPDATE = "/bench/floor/update"
FLOOR_STORE = "/bench/floor/store"


def main() -> None:
    options = parse_args()
    for tool in ("wrk", "hey", "redis-cli"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install -y wrk hey redis-tools")
    database_url = f"{options.server.rstrip('/')}/{options.database}"
    started = time.monotonic()
    print(
        f"ingest benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"{machine_busy():.0f}% busy before start, load average {load_average()} "
        "(anything else running skews req/s)"
    )

    database_recreate(options.server, options.database)
    gunicorn = None
    results: list[Result] = []
    extra: dict = {}
    try:
        os.environ["DATABASE_URL"] = database_url
        os.environ["DEBUG"] = "0"
        # The server's keys here too: the seed digests credentials under the key the
        # server checks them with.
        os.environ.update(SERVER_ENV)
        # A real broker: the inbox drain runs in a worker process, never in the web one.
        os.environ["REDIS_URL"] = options.redis
        os.environ["REDIS_CACHE_DB"] = str(int(options.redis.rsplit("/", 1)[1]) + 1)
        broker_flush(options.redis)
        step("migrate", lambda: run([BIN / "python", "manage.py", "migrate", "--noinput"]))
        with tempfile.TemporaryDirectory(prefix="cutover-bench-") as tmp:
            workdir = Path(tmp)
            auth_path, body_file, sample = step(
                f"seed {options.systems} systems", lambda: seed(options.systems, workdir)
            )
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            gunicorn = step(
                f"start gunicorn -w {options.workers} --threads {options.threads}",
                lambda: gunicorn_start(options, port, workdir / "gunicorn.log"),
            )
            wait_ready(base, gunicorn, workdir / "gunicorn.log")
            probe = CpuProbe(gunicorn.pid, options.server, options.database)
            results = measure(options, base, auth_path, body_file, sample, probe)
            if options.only in (None, "throughput"):
                broker_flush(options.redis)  # the nudges sent so far are not the drain's
                extra["drain"] = step("drain the inbox, one worker", lambda: drain_rate(workdir))
                extra["visibility"] = step(
                    f"inventories at {options.inventory_rate}/s with one worker draining",
                    lambda: inventory_visibility(
                        base,
                        auth_path,
                        body_file,
                        UPTIME_PLACEHOLDER,
                        workdir,
                        rate=options.inventory_rate,
                    ),
                )
            if options.large:
                extra.update(at_scale(options, base, body_file, probe, workdir, results))
            gunicorn_stop(gunicorn)
            gunicorn = None
    finally:
        if gunicorn is not None:
            gunicorn_stop(gunicorn)
        if not options.keep:
            database_drop(options.server, options.database)
    report(results, options)
    report_fleet(extra, options)
    print(f"\nload average at the end {load_average()}")
    print(f"total run time {time.monotonic() - started:.0f} s")


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def at_scale(options, base: str, body_file: Path, probe: CpuProbe, workdir: Path, results):
    """Grow the fleet to ``--large`` systems, then the same throughput loads over systems
    the web processes have not seen, the sustained rate and the wave."""
    added = step(f"grow the fleet to {options.large:,} systems", lambda: fleet_grow(options.large))
    from django.db import connections

    connections.close_all()
    # Three disjoint sets of the added systems: the throughput loads' rotation, the
    # sustained load's (each system once) and the wave's.
    sustained = options.sustained_rate * options.sustained_seconds
    spread = min(100_000, options.large // 10)
    if spread + sustained + options.wave > added:
        sys.exit(
            f"--large {options.large:,} adds {added:,} systems: too few for a rotation of "
            f"{spread:,}, {sustained:,} sustained and a wave of {options.wave:,}"
        )
    rotation = auth_file(workdir / "large.txt", range(FIRST_NUMBER, FIRST_NUMBER + spread))
    small = {r.endpoint: r for r in results}
    scaled = throughput(
        options,
        base,
        rotation,
        body_file,
        probe,
        loads=("bare", "heartbeat", "floor update", "inventory", "floor store"),
        suffix=f" @{options.large // 1000:,}k",
    )
    for result in scaled:
        peer = small.get(result.endpoint.rsplit(" @", 1)[0])
        result.target = f"{result.rate / peer.rate:.2f}× of 1k" if peer and peer.rate else ""
    results.extend(scaled)
    extra = {"added": added}
    if options.only in (None, "fleet"):
        extra["sustained"] = heartbeat_sustained(
            base,
            workdir,
            first=FIRST_NUMBER + spread,
            rate=options.sustained_rate,
            seconds=options.sustained_seconds,
        )
        extra["wave"] = heartbeat_wave(
            base,
            workdir,
            first=FIRST_NUMBER + spread + sustained,
            systems=options.wave,
            connections=options.wave_connections,
            retry_after=options.retry_after,
        )
    return extra


def parse_args() -> argparse.Namespace:
    parser = scratch_parser(__doc__, "cutover_bench")
    parser.add_argument("--systems", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes.")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker.")
    parser.add_argument("--duration", type=int, default=15, help="Seconds per measurement.")
    parser.add_argument("--warmup", type=int, default=2, help="Seconds of warm-up per load.")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections.")
    parser.add_argument("--rate", type=int, default=1000, help="Fixed rate for hey, req/s.")
    parser.add_argument(
        "--hey-processes",
        type=int,
        default=50,
        help="hey processes (one system each) sharing the fixed rate.",
    )
    parser.add_argument(
        "--only",
        choices=["throughput", "fixed-rate", "fleet"],
        help="Run one part: throughput (and the drain), the fixed rate, or the fleet loads.",
    )
    parser.add_argument(
        "--large",
        type=int,
        default=1_000_000,
        help="Grow the fleet to this many systems for the scale loads (0: skip them).",
    )
    parser.add_argument("--inventory-rate", type=int, default=200, help="Inventories/s offered.")
    parser.add_argument("--sustained-rate", type=int, default=1667, help="Heartbeats/s offered.")
    parser.add_argument("--sustained-seconds", type=int, default=60)
    parser.add_argument("--wave", type=int, default=100_000, help="Systems in the wave.")
    parser.add_argument("--wave-connections", type=int, default=1000)
    parser.add_argument(
        "--retry-after",
        type=int,
        default=10,
        help="Seconds the wave waits before re-sending what was refused (the server's least).",
    )
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/6", help="Broker (its database is flushed)."
    )
    return parser.parse_args()


def seed(count: int, workdir: Path) -> tuple[Path, Path, str]:
    """Registered systems with real credentials, each with one earlier inventory.

    Rows are bulk-inserted (the service creates them one transaction at a time, which
    takes longer than the benchmark itself); credentials come from the same functions
    the service uses, and one system is checked through ``system_authenticate``.
    """
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()
    from django.db import connections

    from fleet_app import inventory_diff
    from fleet_app.demo import ns8_inventory
    from fleet_app.models import Inventory, SystemActivityDay

    earlier = datetime.now(UTC) - timedelta(minutes=10)
    # Steady state: registered, secret in use, heartbeat and inventory already seen today,
    # so the benchmark measures the common path, not first-time work.
    systems, auths, _ = systems_seed(
        count,
        at=earlier,
        steady=("registered_at", "secret_confirmed_at", "last_heartbeat_at", "last_inventory_at"),
    )
    SystemActivityDay.objects.bulk_create(
        [SystemActivityDay(system=s, day=earlier.date()) for s in systems], batch_size=1000
    )
    previous = ns8_inventory(seed=1, uptime=1000)
    previous_size = len(json.dumps(previous))
    # As the service stores it: a steady-state inventory compares by digest.
    previous_digest = inventory_diff.facts_digest(inventory_diff.flatten(previous))
    Inventory.objects.bulk_create(
        [
            Inventory(
                system=s,
                received_at=earlier,
                data=previous,
                size=previous_size,
                facts_digest=previous_digest,
            )
            for s in systems
        ],
        batch_size=100,
    )
    from floor import FLOOR_TABLE

    with connections["default"].cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {FLOOR_TABLE} (id bigserial PRIMARY KEY,"
            " received_at timestamptz NOT NULL, body bytea NOT NULL)"
        )
    connections.close_all()

    auth_file = workdir / "auth.txt"
    auth_file.write_text("\n".join(auths) + "\n")
    body_file = workdir / "inventory.json"
    body_file.write_text(json.dumps(ns8_inventory(seed=1, uptime=int(UPTIME_PLACEHOLDER))))
    return auth_file, body_file, auths[0]


# --- load ---------------------------------------------------------------------------------


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> tuple[int, float, float, float, str]:
    """Requests, requests/sec, p50 and p99 in ms, and failures, from wrk --latency."""
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))
    notes = []
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        notes.append(f"{match.group(1)} non-2xx")
    if match := re.search(r"Socket errors: (.*)", output):
        notes.append(f"socket errors: {match.group(1)}")
    return requests, rate, p50, p99, "; ".join(notes)


def wrk(base: str, path: str, seconds: int, options, *script_args: Path | str) -> str:
    command = [
        "wrk",
        "-t2",
        f"-c{options.connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if script_args:
        command += ["-s", str(LUA)]
    command.append(base + path)
    if script_args:
        command += ["--", *map(str, script_args)]
    return run(command, timeout=seconds + 30).stdout


# name: (label, path, with a body, target, the name of its floor)
LOADS = {
    "bare": ("GET /healthz (bare)", BARE, None, "", None),
    "heartbeat": ("POST heartbeat", HEARTBEAT, False, "≥ 0.50× bare", "floor update"),
    "floor update": ("  floor: one UPDATE", FLOOR_UPDATE, False, "", None),
    "inventory": ("POST inventory (50 KB)", INVENTORY, True, "≥ 0.80× floor", "floor store"),
    "floor store": ("  floor: store 50 KB", FLOOR_STORE, True, "", None),
}


def throughput(
    options,
    base: str,
    auth_file: Path,
    body_file: Path,
    probe: CpuProbe,
    *,
    loads: tuple[str, ...] = tuple(LOADS),
    suffix: str = "",
) -> list[Result]:
    label = f"wrk -t2 -c{options.connections} {options.duration}s"
    results: dict[str, Result] = {}
    for name in loads:
        endpoint, path, with_body, target, _ = LOADS[name]
        script_args: tuple = ()
        if with_body is not None:
            script_args = (auth_file, body_file, UPTIME_PLACEHOLDER) if with_body else (auth_file,)
        if options.warmup:
            wrk(base, path, options.warmup, options, *script_args)
        before = probe.snapshot()
        output = step(
            f"{label} {endpoint}{suffix}",
            lambda p=path, a=script_args: wrk(base, p, options.duration, options, *a),
        )
        requests, rate, p50, p99, errors = parse_wrk(output)
        web, db = probe.per_request(before, probe.snapshot(), requests)
        results[name] = Result(
            endpoint + suffix,
            label,
            rate,
            p50,
            p99,
            errors,
            target=target,
            web_cpu_ms=web,
            db_cpu_ms=db,
        )
    bare = results["bare"].rate if "bare" in results else 0
    for name, result in results.items():
        result.ratio = result.rate / bare if bare else None
        floor = results.get(LOADS[name][4] or "")
        if floor is not None and floor.rate:
            result.floor_ratio = result.rate / floor.rate
    return list(results.values())


def hey_fixed_rate(
    options, base: str, path: str, method: str, auths: list[str]
) -> tuple[int, float, float, float, str]:
    """Run len(auths) hey processes in parallel, each at rate/len(auths) req/s."""
    processes = len(auths)
    per_process = options.rate / processes
    # hey's -q is per worker; two workers per process absorb a slow response or two
    # without falling behind the rate.
    workers = 2 if per_process >= 2 else 1
    env = {**os.environ, "GOMAXPROCS": "1"}
    running = []
    for auth in auths:
        command = [
            "hey",
            "-z",
            f"{options.duration}s",
            "-c",
            str(workers),
            "-q",
            f"{per_process / workers:g}",
            "-m",
            method,
            "-o",
            "csv",
        ]
        if auth:
            command += ["-H", f"Authorization: {auth}"]
        command.append(base + path)
        running.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        )
    latencies, statuses = [], {}
    for process in running:
        out, err = process.communicate(timeout=options.duration + 60)
        if process.returncode:
            sys.exit(f"hey failed: {err.decode()[-500:]}")
        for row in csv.DictReader(io.StringIO(out.decode())):
            latencies.append(float(row["response-time"]) * 1000)
            statuses[row["status-code"]] = statuses.get(row["status-code"], 0) + 1
    latencies.sort()
    rate = len(latencies) / options.duration
    errors = ", ".join(f"{n} × {code}" for code, n in sorted(statuses.items()) if code[0] != "2")
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    return len(latencies), rate, p50, p99, errors


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def fixed_rate(options, base: str, auth_file: Path, probe: CpuProbe) -> list[Result]:
    auths = auth_file.read_text().split("\n")[: options.hey_processes]
    per = options.rate / len(auths)
    label = f"hey {len(auths)}×{per:g}/s {options.duration}s"
    results = []
    for endpoint, path, method, with_auth in (
        ("GET /healthz (bare)", BARE, "GET", False),
        ("POST heartbeat", HEARTBEAT, "POST", True),
    ):
        before = probe.snapshot()
        requests, rate, p50, p99, errors = step(
            f"{label} {endpoint}",
            lambda p=path, m=method, a=with_auth: hey_fixed_rate(
                options, base, p, m, auths if a else [""] * len(auths)
            ),
        )
        web, db = probe.per_request(before, probe.snapshot(), requests)
        results.append(
            Result(
                f"{endpoint} @{options.rate}/s",
                label,
                rate,
                p50,
                p99,
                errors,
                web_cpu_ms=web,
                db_cpu_ms=db,
            )
        )
    results[1].target = "p99 < 50 ms"
    return results


def measure(
    options, base: str, auth_file: Path, body_file: Path, sample: str, probe: CpuProbe
) -> list[Result]:
    request = urllib.request.Request(
        base + HEARTBEAT, method="POST", headers={"Authorization": sample}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        if response.status != 200:
            sys.exit(f"a heartbeat answered {response.status}, not 200: nothing to measure")
    results = []
    if options.only in (None, "throughput"):
        results += throughput(options, base, auth_file, body_file, probe)
    if options.only in (None, "fixed-rate"):
        results += fixed_rate(options, base, auth_file, probe)
    return results


# --- report -------------------------------------------------------------------------------


if __name__ == "__main__":
    main()
