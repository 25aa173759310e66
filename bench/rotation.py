"""Bulk rotation benchmark: how long does re-keying 100,000 legacy mappings take?

Creates a fresh PostgreSQL database, migrates it, inserts the mappings and their native
systems with real digests (COPY, from unsaved model instances, so it follows the model),
starts one real Celery worker on a queue of its own, starts a bulk rotation of every
mapping and measures the wall time until the run row says ``succeeded``. Then it checks
that every mapping was rotated exactly once and prints the figures next to the target
(≤ 120 s for 100,000 mappings); it never passes or fails. Finally it stops the worker,
drops the database and the queue.

    .venv/bin/python bench/rotation.py            # --help for the options
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from common import ROOT, database_drop, database_recreate, django_setup, run, scratch_parser, step
from server import worker_stop

BIN = Path(sys.executable).parent
TARGET_SECONDS = 120
TARGET_MAPPINGS = 100_000


def main() -> None:
    options = parse_args()
    started = time.monotonic()
    print(
        f"bulk rotation benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, {options.mappings} mappings, chunks of {options.chunk_size}, "
        f"worker --pool {options.pool} -c {options.concurrency}"
    )
    database_recreate(options.server, options.database)
    os.environ["DATABASE_URL"] = f"{options.server.rstrip('/')}/{options.database}"
    os.environ["REDIS_URL"] = options.redis
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    queue = f"bench-rot-{uuid.uuid4().hex[:8]}"
    worker = None
    figures: dict = {}
    try:
        step("migrate", lambda: run([BIN / "python", "manage.py", "migrate", "--noinput"]))
        step(f"seed {options.mappings} mappings", lambda: seed(options.mappings))
        with tempfile.TemporaryDirectory(prefix="cutover-bench-rot-") as tmp:
            log = Path(tmp) / "worker.log"
            worker = step("start the worker", lambda: worker_start(options, queue, log))
            figures = measure(options, queue)
            figures["chunks"] = chunk_times(log)
            worker_stop(worker)
            worker = None
            figures["check"] = step("check every mapping was rotated once", check)
    finally:
        if worker is not None:
            worker_stop(worker)
        queue_drop(options.redis, queue)
        if not options.keep:
            database_drop(options.server, options.database)
    report(figures, options)
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")


def parse_args() -> argparse.Namespace:
    parser = scratch_parser(__doc__, "cutover_bench_rot")
    # A Redis database of its own, so the worker never restores other users' messages.
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12", help="Broker URL.")
    parser.add_argument("--mappings", type=int, default=TARGET_MAPPINGS)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo"])
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="Worker processes (chunks of one run are serial: 1 is enough).",
    )
    parser.add_argument("--timeout", type=int, default=1800, help="Give up after this many s.")
    return parser.parse_args()  # fmt: skip


def _copy(model, instances) -> None:
    """COPY unsaved instances into the model's table (every concrete column but the id)."""
    from django.db import connection

    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor under Django's wrapper
        with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for obj in instances:
                copy.write_row(
                    [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
                )


def seed(count: int) -> None:
    """Organizations, ``count`` systems never registered and their legacy mappings.

    Credentials come from the functions the services use; the rows go in with COPY (the
    import service creates one mapping per transaction, far slower than the rotation).
    """
    django_setup()
    from django.db import connection, transaction
    from django.utils import timezone

    from fleet_app import credentials, services
    from fleet_app.models import System
    from migrations_app.cutover.services import counters_bump
    from migrations_app.models import LegacyMapping

    owner = services.organization_create(actor=None, name="bench-owner", kind="owner")
    customer = services.organization_create(
        actor=None, name="bench-customer", kind="customer", parent=owner
    )
    now = timezone.now()
    with transaction.atomic():
        systems = []
        for number in range(count):
            public, secret = credentials.system_secret_generate()
            systems.append(
                System(
                    organization=customer,
                    name=f"bench-{number:06d}",
                    system_key=credentials.system_key_generate(),
                    secret_public=public,
                    secret_digest=credentials.digest(secret),
                    created_at=now,
                )
            )
        _copy(System, systems)
        ids = dict(System.objects.filter(organization=customer).values_list("system_key", "pk"))
        _copy(
            LegacyMapping,
            (
                LegacyMapping(
                    legacy_system_id=f"legacy-{number:06d}",
                    legacy_token_digest=credentials.digest(f"legacy-token-{number}"),
                    system_id=ids[system.system_key],
                    created_at=now,
                )
                for number, system in enumerate(systems)
            ),
        )
        counters_bump(mappings=count)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


# --- worker ---------------------------------------------------------------------------------


def worker_start(options, queue: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "CONN_MAX_AGE": "60", "LOG_LEVEL": "INFO"}
    console = log.with_suffix(".out")
    with console.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "python"), "-m", "celery", "-A", "controlplane", "worker",
             "--pool", options.pool, "--concurrency", str(options.concurrency), "-Q", queue,
             "-n", f"{queue}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", "INFO", "--logfile", str(log)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while "ready" not in (log.read_text() if log.exists() else ""):
        if process.poll() is not None or time.monotonic() > deadline:
            said = "\n".join(p.read_text()[-2000:] for p in (console, log) if p.exists())
            sys.exit(f"the Celery worker did not start:\n{said}")
        time.sleep(0.1)
    return process


def queue_drop(url: str, queue: str) -> None:
    import redis

    # The queue and the bindings kombu keeps for it.
    redis.Redis.from_url(url).delete(
        queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"
    )


def chunk_times(log: Path) -> list[float]:
    """Seconds each task message took, from the worker's "succeeded in" lines."""
    text = log.read_text() if log.exists() else ""
    pattern = r"rotation_run_execute\[[^]]+\] succeeded in ([\d.]+)s"
    return [float(seconds) for seconds in re.findall(pattern, text)]


# --- measure --------------------------------------------------------------------------------


def measure(options, queue: str) -> dict:
    from migrations_app.cutover.rotation import rotation_run_start
    from migrations_app.models import RotationRun

    began = time.monotonic()
    run = rotation_run_start(actor=None, filters={}, chunk_size=options.chunk_size, queue=queue)
    started = time.monotonic()
    print(f"  run {run.pk} started over {run.total} mappings "
          f"({started - began:.2f} s to count and enqueue)", flush=True)  # fmt: skip
    last_print = started
    while True:
        row = RotationRun.objects.get(pk=run.pk)
        now = time.monotonic()
        if row.is_finished:
            break
        if now - started > options.timeout:
            sys.exit(f"  gave up after {options.timeout} s at {row.done}/{row.total}")
        if now - last_print >= 10:
            print(f"    {now - began:5.0f} s  {row.done}/{row.total}", flush=True)
            last_print = now
        time.sleep(0.1)
    wall = time.monotonic() - began
    return {
        "run": row,
        "wall": wall,
        "in_run": (row.finished_at - row.started_at).total_seconds(),
    }


def check() -> dict:
    from django.db.models import Count, Q

    from migrations_app.models import CutoverDay, LegacyMapping

    counts = LegacyMapping.objects.aggregate(
        total=Count("pk"),
        once=Count("pk", filter=Q(rotation_count=1)),
        other=Count("pk", filter=~Q(rotation_count=1)),
    )
    counts["counted_rotated"] = sum(CutoverDay.objects.values_list("rotated", flat=True))
    return counts


def report(figures: dict, options) -> None:
    if not figures:
        return
    run, wall = figures["run"], figures["wall"]
    rate = run.done / wall if wall else 0.0
    print("\nresult")
    print(f"  run state              {run.state}{' — ' + run.error if run.error else ''}")
    print(f"  mappings rotated       {run.done} of {run.total}")
    print(f"  wall time              {wall:.1f} s  (start of the run to succeeded, polled)")
    print(f"  run row started→done   {figures['in_run']:.1f} s")
    print(f"  throughput             {rate:,.0f} mappings/s")
    scaled = TARGET_MAPPINGS / rate if rate else float("inf")
    print(
        f"  target                 ≤ {TARGET_SECONDS} s for {TARGET_MAPPINGS:,} mappings: "
        f"{scaled:.1f} s at this rate ({scaled / TARGET_SECONDS:.0%} of the budget)"
    )
    chunks = figures.get("chunks") or []
    if chunks:
        ordered = sorted(chunks)
        median = statistics.median(ordered) * 1000
        print(
            f"  task messages          {len(chunks)}: median {median:.0f}"
            f" ms, p95 {ordered[int(0.95 * (len(ordered) - 1))] * 1000:.0f} ms,"
            f" max {ordered[-1] * 1000:.0f} ms; {sum(chunks):.1f} s in tasks,"
            f" {wall - sum(chunks):.1f} s between them (queue, polling)"
        )
    check = figures.get("check")
    if check:
        print(
            f"  exactly once           {check['once']} of {check['total']} mappings rotated "
            f"once, {check['other']} otherwise; day counters say {check['counted_rotated']}"
        )


if __name__ == "__main__":
    main()
