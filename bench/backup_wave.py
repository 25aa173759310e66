"""Cluster backups at fleet rate: 1 MB uploads from many systems at a fixed offered rate.

Creates a fresh PostgreSQL database, migrates it, seeds 10,000 registered systems with
real credentials (bulk insert, credentials from fleet_app.credentials, one system checked
through ``system_authenticate``), starts gunicorn on loopback with the ingest
benchmark's shape (bench/server.py), a Celery worker for the tasks the uploads send
(retention), and then, for each offered rate:

a) offers ``POST {collect_url}/backups`` of a 1 MB body at that rate for the duration,
   open loop: a send is scheduled every 1/rate s whatever the server answers, each on
   its own connection (``Connection: close``, as curl on a cluster does), each from a
   different system, each body different (an 8-byte counter prefixed to 1 MB of random
   bytes; the SHA-256 of every body is computed before the wave). Latency is from the
   scheduled send to the answer, so a server falling behind shows in it. A 429 or 503
   with ``Retry-After`` is retried up to ``--retries`` times after that many seconds
   (ns8's curl ``--retry 3`` does the same);
b) the same load on the floor (bench/floor.py ``/bench/floor/backup``: read, hash,
   write, fsync; no authentication, no quota, no row), on the same server;

then verifies what was stored: every row's SHA-256 against what was sent for the answer
that named it, every stored object's bytes against the row, and the count of rows
against the count of 201 answers. It prints achieved/s, p50/p99, status counts (every 5xx
counted), CPU per request of the gunicorn workers and the database backends (CpuProbe)
and a ``vs floor`` column. It never passes or fails. Between waves the rows and objects
are deleted so the disk holds one wave at a time (9 GB at 150/s for 60 s).

    .venv/bin/python bench/backup_wave.py                       # 150/s for 60 s
    .venv/bin/python bench/backup_wave.py --rates 300,600 --duration 20   # saturation
    .venv/bin/python bench/backup_wave.py --storage s3          # against moto_server
"""

import asyncio
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
from server import (
    BIN,
    CpuProbe,
    free_port,
    gunicorn_start,
    gunicorn_stop,
    machine_busy,
    wait_ready,
)

UPLOAD = "/collect/api/systems/backups"
FLOOR = "/bench/floor/backup"
S3_BUCKET = "bench-backups"
# moto takes any key pair: one made up per run.
S3_KEY, S3_SECRET = "bench", os.urandom(12).hex()


def parse_args():
    parser = scratch_parser(__doc__, "cutover_bench_wave")
    parser.add_argument("--systems", type=int, default=10_000)
    parser.add_argument(
        "--rates", default="150", help="Offered rates (uploads/s), comma-separated."
    )
    parser.add_argument("--duration", type=float, default=60, help="Seconds of each wave.")
    parser.add_argument("--size-kib", type=int, default=1024, help="Body size (KiB).")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes.")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker.")
    parser.add_argument("--retries", type=int, default=3, help="Retries after 429/503.")
    parser.add_argument("--timeout", type=float, default=30, help="Client timeout per request (s).")
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    parser.add_argument("--no-floor", action="store_true", help="Skip the floor waves.")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Broker and cache (the cache on the next database number); '' for the "
        "embedded default (tasks in-process, local-memory cache).",
    )
    return parser.parse_args()


# --- seed ---------------------------------------------------------------------------------


def seed(count: int) -> list[str]:
    """Registered systems in steady state with real credentials; their Basic headers."""
    from django.db import connections

    earlier = datetime.now(UTC) - timedelta(minutes=10)
    _, auths, _ = systems_seed(
        count, at=earlier, steady=("registered_at", "secret_confirmed_at", "last_heartbeat_at")
    )
    connections.close_all()
    return auths


# --- load ---------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int  # 0: no answer (connection refused or reset, or timed out: see ``error``)
    latency: float  # seconds from the scheduled send to the answer
    tries: int
    first_status: int
    error: str = ""
    backup_id: str = ""
    sha256: str = ""


@dataclass
class Wave:
    endpoint: str
    rate: float
    duration: float
    answers: list[Answer] = field(default_factory=list)
    elapsed: float = 0.0
    client_cpu: float = 0.0
    web_cpu_ms: float | None = None
    db_cpu_ms: float | None = None
    sent: dict[str, str] = field(default_factory=dict)  # backup id → SHA-256 sent
    verified: str = ""

    @property
    def stored(self) -> int:
        return sum(1 for a in self.answers if a.status in (200, 201))

    @property
    def achieved(self) -> float:
        return self.stored / self.elapsed if self.elapsed else 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(a.latency for a in self.answers if a.status)
        if not ordered:
            return 0.0
        return 1000 * ordered[max(1, math.ceil(fraction * len(ordered))) - 1]

    def statuses(self) -> str:
        counts: dict[str, int] = {}
        for a in self.answers:
            label = str(a.status) if a.status else (a.error or "no answer")
            counts[label] = counts.get(label, 0) + 1
        retried = sum(1 for a in self.answers if a.tries > 1)
        text = ", ".join(f"{n} × {label}" for label, n in sorted(counts.items()))
        firsts = sum(1 for a in self.answers if a.first_status in (429, 503))
        if firsts:
            text += f" (first answer 429/503: {firsts}, retried: {retried})"
        return text

    @property
    def server_errors(self) -> int:
        return sum(1 for a in self.answers if a.status >= 500 and a.status != 503)


def request_head(host: str, path: str, auth: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
        "Content-Type: application/octet-stream\r\nX-Filename: cluster-backup.json.gz.gpg\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


async def send_once(port: int, head: bytes, prefix: bytes, body: bytes, timeout: float):
    """One request on its own connection; (status, Retry-After, parsed JSON or None)."""

    async def exchange():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head + prefix)
            writer.write(body)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        return raw

    raw = await asyncio.wait_for(exchange(), timeout)
    header, _, payload = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    retry_after = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "retry-after":
            retry_after = int(value.strip() or 0)
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    return status, retry_after, data


async def one_upload(
    port: int, path: str, auth: str, prefix: bytes, body: bytes, at: float, options
) -> Answer:
    head = request_head(f"127.0.0.1:{port}", path, auth, len(prefix) + len(body))
    loop = asyncio.get_running_loop()
    delay = at - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    first, tries = 0, 0
    while True:
        tries += 1
        try:
            status, retry_after, data = await send_once(port, head, prefix, body, options.timeout)
        except TimeoutError:
            return Answer(0, loop.time() - at, tries, first, "timeout")
        except OSError as error:
            return Answer(0, loop.time() - at, tries, first, type(error).__name__)
        first = first or status
        if status in (429, 503) and retry_after and tries <= options.retries:
            await asyncio.sleep(retry_after)
            continue
        answer = Answer(status, loop.time() - at, tries, first)
        if status in (200, 201) and isinstance(data, dict) and data.get("data"):
            answer.backup_id = str(data["data"].get("id", ""))
            answer.sha256 = str(data["data"].get("sha256", ""))
        return answer


def offer(port: int, path: str, auths: list[str], start: int, rate: float, options, body: bytes):
    """Offer ``rate`` uploads/s for the duration; the answers, seconds to the last one, the
    SHA-256 sent per request, and this process's CPU seconds."""
    count = int(rate * options.duration)
    prefixes = [f"{start + n:08d}".encode() for n in range(count)]
    expected = []
    for prefix in prefixes:
        digest = hashlib.sha256(prefix)
        digest.update(body)
        expected.append(digest.hexdigest())
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)

    async def wave():
        loop = asyncio.get_running_loop()
        began = loop.time() + 0.2
        tasks = [
            asyncio.create_task(
                one_upload(
                    port,
                    path,
                    auths[(start + n) % len(auths)],
                    prefixes[n],
                    body,
                    began + n / rate,
                    options,
                )
            )
            for n in range(count)
        ]
        answers = await asyncio.gather(*tasks)
        return answers, loop.time() - began

    answers, elapsed = asyncio.run(wave())
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return answers, elapsed, expected, cpu


def run_wave(endpoint, path, rate, options, port, auths, start, body, probe) -> Wave:
    wave = Wave(endpoint, rate, options.duration)
    before = probe.snapshot()
    answers, elapsed, expected, cpu = step(
        f"{endpoint} at {rate:g}/s for {options.duration:g} s",
        lambda: offer(port, path, auths, start, rate, options, body),
    )
    wave.web_cpu_ms, wave.db_cpu_ms = probe.per_request(before, probe.snapshot(), len(answers))
    wave.answers, wave.elapsed, wave.client_cpu = answers, elapsed, cpu
    for answer, sent in zip(answers, expected, strict=True):
        if answer.backup_id:
            wave.sent[answer.backup_id] = sent
        elif answer.sha256 and answer.sha256 != sent:
            wave.verified = "floor hashed something else"
    return wave


# --- verification ---------------------------------------------------------------------------


def verify(wave: Wave) -> str:
    """Every row against what was sent, every object against its row, rows against 201s;
    then the rows, objects and quota usage are cleared for the next wave."""
    from django.db import connections

    from backups_app.cluster_backups.models import ClusterBackup
    from backups_app.storage import get_store
    from fleet_app.models import Quota

    store = get_store()
    rows = list(ClusterBackup.objects.values_list("pk", "sha256", "storage_key", "size"))
    bad_row = bad_object = unanswered = 0
    for pk, sha256, key, size in rows:
        sent = wave.sent.get(str(pk))
        if sent is None:
            unanswered += 1  # stored, but its answer never reached the client
        elif sent != sha256:
            bad_row += 1
        digest, total = hashlib.sha256(), 0
        for chunk in store.read(key):
            digest.update(chunk)
            total += len(chunk)
        if digest.hexdigest() != sha256 or total != size:
            bad_object += 1
    answered = wave.stored
    ids = {str(r[0]) for r in rows}
    missing = sum(1 for pk in wave.sent if pk not in ids)
    for _, _, key, _ in rows:
        store.delete(key)
    ClusterBackup.objects.all().delete()
    Quota.objects.update(usage=0)
    connections.close_all()
    return (
        f"{len(rows)} rows for {answered} × 201; sha256 sent≠row {bad_row}, object≠row "
        f"{bad_object}; answered but no row {missing}; row without an answer {unanswered}"
    )


# --- servers --------------------------------------------------------------------------------


def s3_start(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (workdir / "moto.log").open("w")
    process = subprocess.Popen(
        [BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    deadline = time.monotonic() + 30
    while True:
        try:
            boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=S3_KEY,
                aws_secret_access_key=S3_SECRET,
                region_name="us-east-1",
            ).create_bucket(Bucket=S3_BUCKET)
            return process, endpoint
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def worker_start(workdir: Path) -> subprocess.Popen:
    log = (workdir / "celery.log").open("w")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "controlplane.settings"}
    return subprocess.Popen(
        [BIN / "celery", "-A", "controlplane", "worker", "--pool", "solo", "-l", "warning"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def environment(options, workdir: Path, s3_endpoint: str | None) -> None:
    """The server's (and this process's) settings: storage, fsync, broker, limits."""
    # This process seeds the credentials the server checks: the same digest key.
    os.environ.update(SERVER_ENV)
    os.environ.update(
        {
            "DEBUG": "0",
            "BACKUP_LOCAL_ROOT": str(workdir / "store"),
            "BACKUP_LOCAL_FSYNC": "true",
            "CLUSTER_BACKUP_RATE_COUNT": "6",
            "REDIS_URL": options.redis_url,
        }
    )
    if options.redis_url:
        number = int(options.redis_url.rstrip("/").rsplit("/", 1)[-1] or 0)
        os.environ["REDIS_CACHE_DB"] = str(number + 1)
    if s3_endpoint:
        os.environ.update(
            {
                "BACKUP_STORAGE_URL": f"s3://{S3_BUCKET}/wave",
                "BACKUP_S3_ENDPOINT_URL": s3_endpoint,
                "BACKUP_S3_ACCESS_KEY_ID": S3_KEY,
                "BACKUP_S3_SECRET_ACCESS_KEY": S3_SECRET,
                "BACKUP_S3_REGION": "us-east-1",
            }
        )
    else:
        os.environ["BACKUP_STORAGE_URL"] = ""


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    options = parse_args()
    # Open loop: connections pile up when the server falls behind.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rates = [float(r) for r in options.rates.split(",")]
    needed = int(sum(rates) * options.duration)
    if needed > 6 * options.systems:
        sys.exit(f"{needed} uploads need more than {options.systems} systems × 6 per hour.")
    started = time.monotonic()
    one, five, _ = os.getloadavg()
    print(
        f"backup wave benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"{machine_busy():.0f}% busy before start, load {one:.1f}/{five:.1f} (1/5 min); "
        f"{options.systems} systems, {options.size_kib} KiB bodies, {options.storage} storage"
    )
    database_url = f"{options.server.rstrip('/')}/{options.database}"
    database_recreate(options.server, options.database)
    gunicorn = worker = s3 = None
    waves: list[Wave] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cutover-wave-", dir="/var/tmp") as tmp:
            workdir = Path(tmp)
            endpoint = None
            if options.storage == "s3":
                s3, endpoint = step("start moto_server", lambda: s3_start(workdir))
            os.environ["DATABASE_URL"] = database_url
            environment(options, workdir, endpoint)
            step("migrate", lambda: run([BIN / "python", "manage.py", "migrate", "--noinput"]))
            sys.path.insert(0, str(ROOT))
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
            import django

            django.setup()
            auths = step(f"seed {options.systems} systems", lambda: seed(options.systems))
            port = free_port()
            gunicorn = step(
                f"start gunicorn -w {options.workers} --threads {options.threads}",
                lambda: gunicorn_start(options, port, workdir / "gunicorn.log"),
            )
            wait_ready(f"http://127.0.0.1:{port}", gunicorn, workdir / "gunicorn.log")
            if options.redis_url:
                worker = step("start a Celery worker", lambda: worker_start(workdir))
            probe = CpuProbe(gunicorn.pid, options.server, options.database)
            body = os.urandom(options.size_kib * 1024)
            # Warm-up: every worker thread imported, connected, its quota row made.
            warm = Wave("warm-up", 20, 1)
            warm.answers, *_ = offer(port, UPLOAD, auths, len(auths) - 40, 20, warm_options(
                options), body)  # fmt: skip
            verify(warm)
            start = 0
            for rate in rates:
                wave = run_wave(
                    "POST backups", UPLOAD, rate, options, port, auths, start, body, probe
                )
                start += len(wave.answers)
                wave.verified = step("verify and clear", lambda w=wave: verify(w))
                waves.append(wave)
                if not options.no_floor:
                    floor = run_wave("  floor", FLOOR, rate, options, port, auths, 0, body, probe)
                    waves.append(floor)
            gunicorn_stop(gunicorn)
            gunicorn = None
            print(f"  gunicorn log tail: {tail(workdir / 'gunicorn.log')}")
            if worker is not None:
                print(f"  celery log tail: {tail(workdir / 'celery.log')}")
    finally:
        stop(worker)
        if gunicorn is not None:
            gunicorn_stop(gunicorn)
        stop(s3)
        if not options.keep:
            database_drop(options.server, options.database)
    report(waves, options)
    one, five, _ = os.getloadavg()
    print(f"\ntotal run time {time.monotonic() - started:.0f} s; load {one:.1f}/{five:.1f}")


def warm_options(options):
    import copy

    warm = copy.copy(options)
    warm.duration = 2
    return warm


def tail(path: Path) -> str:
    text = path.read_text().strip() if path.exists() else ""
    return text[-600:] if text else "(empty)"


def report(waves: list[Wave], options) -> None:
    print(
        f"\ngunicorn -w {options.workers} --threads {options.threads} (gthread), "
        f"{options.systems} systems, {options.size_kib} KiB bodies, {options.storage} storage, "
        f"PostgreSQL on loopback, {os.cpu_count()} CPUs shared by server, database, "
        "worker and load generator\n"
    )
    header = (
        f"{'endpoint':<14} {'offered':>8} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs floor':>9} {'web CPU':>8} {'db CPU':>7} {'gen CPU':>8}  statuses"
    )
    print(header)
    print("-" * len(header))
    floors = {w.rate: w for w in waves if w.endpoint.strip() == "floor"}
    for w in waves:
        floor = floors.get(w.rate)
        ratio = (
            f"{w.achieved / floor.achieved:.2f}×"
            if floor and floor is not w and floor.achieved
            else ""
        )
        web = f"{w.web_cpu_ms:.1f}" if w.web_cpu_ms is not None else ""
        db = f"{w.db_cpu_ms:.1f}" if w.db_cpu_ms is not None else ""
        gen = f"{1000 * w.client_cpu / max(len(w.answers), 1):.1f}"
        print(
            f"{w.endpoint:<14} {w.rate:>7g}/s {w.achieved:>7.1f}/s {w.percentile(0.5):>8.0f} "
            f"{w.percentile(0.99):>8.0f} {ratio:>9} {web:>8} {db:>7} {gen:>8}  {w.statuses()}"
        )
        if w.server_errors:
            print(f"{'':<14} {w.server_errors} answers were 5xx other than 503")
        if w.verified:
            print(f"{'':<14} verified: {w.verified}")
    print(
        "\nachieved: 201 answers ÷ seconds from the first scheduled send to the last answer; "
        "latency from\nthe scheduled send (open loop); web/db/gen CPU: ms of CPU per "
        "request of the gunicorn workers,\nthe PostgreSQL backends (a floor: see CpuProbe) "
        "and this load generator."
    )


if __name__ == "__main__":
    main()
