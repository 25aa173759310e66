"""Sign-in storm benchmark: does a flood of wrong staff passwords slow the heartbeat?

Creates a fresh PostgreSQL database, migrates it, seeds a few hundred registered systems
(bench/ingest.py's seed) and one staff account whose password uses the production hasher
(PBKDF2, not the tests' MD5). Then, for each hashing bound asked for (SIGNIN_HASH_SLOTS;
0 is no bound), it starts gunicorn as bench/ingest.py does and measures the heartbeat at
a fixed rate with hey (p50, p99, req/s):

a) idle: nothing else running;
b) storm: at the same time, wrk with N connections posts wrong passwords to /admin/login/
   continuously, each naming a fresh account from a fresh address (bench/login_storm.lua),
   so the sign-in lockout never stops a request and every one costs a password check
   unless the bound refuses it.

It prints the figures, the storm's own rate and answers, and the storm/idle ratios
(target: p99 during the storm within 2× of idle). It never passes or fails. Then it
stops gunicorn and drops the database.

    .venv/bin/python bench/login_storm.py --help
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common import database_drop, database_recreate, run, scratch_parser, step
from ingest import HEARTBEAT, hey_fixed_rate, seed
from server import BIN, CpuProbe, free_port, gunicorn_start, gunicorn_stop, machine_busy, wait_ready

ROOT = Path(__file__).resolve().parent.parent
STORM_LUA = ROOT / "bench" / "login_storm.lua"
LOGIN = "/admin/login/"
STAFF_EMAIL = "staff@example.com"
STAFF_PASSWORD = "the staff password"  # noqa: S105 - a scratch account


@dataclass
class Figures:
    """One heartbeat measurement, and the storm that ran beside it (if any)."""

    rate: float
    p50_ms: float
    p99_ms: float
    errors: str
    web_cpu_ms: float | None
    storm_rate: float | None = None
    storm_answers: str = ""


def main() -> None:
    options = parse_args()
    for tool in ("wrk", "hey"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install -y wrk hey")
    started = time.monotonic()
    print(
        f"sign-in storm benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, {machine_busy():.0f}% busy before start"
    )
    database_recreate(options.server, options.database)
    results: dict[str, tuple[Figures, Figures, Figures | None]] = {}
    try:
        os.environ["DATABASE_URL"] = f"{options.server.rstrip('/')}/{options.database}"
        os.environ["DEBUG"] = "0"
        step("migrate", lambda: run([BIN / "python", "manage.py", "migrate", "--noinput"]))
        with tempfile.TemporaryDirectory(prefix="cutover-bench-login-") as tmp:
            workdir = Path(tmp)
            auth_file, _, _ = step(
                f"seed {options.systems} systems", lambda: seed(options.systems, workdir)
            )
            step("staff account (production hasher)", staff_create)
            for slots in options.slots:
                label = f"bound {slots} slot{'s' if slots != 1 else ''}" if slots else "no bound"
                results[label] = measure_server(options, slots, workdir, auth_file)
    finally:
        if not options.keep:
            database_drop(options.server, options.database)
    report(results, options)
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")


def parse_args():
    parser = scratch_parser(__doc__, "cutover_bench_login")
    parser.add_argument("--systems", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes.")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker.")
    parser.add_argument("--duration", type=int, default=15, help="Seconds per measurement.")
    parser.add_argument("--rate", type=int, default=200, help="Heartbeat rate for hey, req/s.")
    parser.add_argument(
        "--hey-processes", type=int, default=20, help="hey processes sharing the rate."
    )
    parser.add_argument(
        "--storm", type=int, default=32, help="Concurrent wrong-password clients (wrk -c)."
    )
    parser.add_argument(
        "--slots",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[0, 1],
        help="SIGNIN_HASH_SLOTS values to measure, comma-separated (0: no bound).",
    )
    parser.add_argument(
        "--flood",
        action="store_true",
        help="Also measure heartbeats during a flood of GET /healthz from as many clients.",
    )
    parser.add_argument("--wait", type=float, help="SIGNIN_HASH_WAIT_SECONDS (default: settings).")
    parser.add_argument("--nice", type=int, help="SIGNIN_HASH_NICE (default: settings).")
    return parser.parse_args()


def staff_create() -> None:
    from django.conf import settings
    from django.db import connections

    from fleet_app.models import User

    assert "PBKDF2" in settings.PASSWORD_HASHERS[0], settings.PASSWORD_HASHERS[0]
    User.objects.create_superuser(STAFF_EMAIL, STAFF_PASSWORD)
    connections.close_all()


def sign_in_works(base: str) -> bool:
    """A real sign-in through the form, so the storm is known to exercise that path."""
    token = "benchbenchbenchbenchbenchbench12"  # noqa: S105 - any 32 letters will do
    body = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token, "username": STAFF_EMAIL, "password": STAFF_PASSWORD}
    ).encode()
    request = urllib.request.Request(
        base + LOGIN,
        data=body,
        headers={"Cookie": f"csrftoken={token}", "X-Forwarded-For": "192.0.2.1"},
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(request, timeout=10)
    except urllib.error.HTTPError as error:
        return error.code == 302
    return False


def measure_server(options, slots: int, workdir: Path, auth_file: Path) -> tuple:
    os.environ["SIGNIN_HASH_SLOTS"] = str(slots)
    # The storm's X-Forwarded-For is the client, as behind one load balancer.
    os.environ["TRUSTED_PROXY_COUNT"] = "1"
    os.environ["RUN_DIR"] = str(workdir / "run")
    if options.wait is not None:
        os.environ["SIGNIN_HASH_WAIT_SECONDS"] = str(options.wait)
    if options.nice is not None:
        os.environ["SIGNIN_HASH_NICE"] = str(options.nice)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = workdir / f"gunicorn-{slots}.log"
    gunicorn = step(
        f"start gunicorn -w {options.workers} --threads {options.threads}, "
        f"SIGNIN_HASH_SLOTS={slots}",
        lambda: gunicorn_start(options, port, log),
    )
    try:
        wait_ready(base, gunicorn, log)
        if not sign_in_works(base):
            sys.exit(f"the staff sign-in did not work:\n{log.read_text()[-2000:]}")
        probe = CpuProbe(gunicorn.pid, options.server, options.database)
        auths = auth_file.read_text().split("\n")[: options.hey_processes]
        heartbeat(options, base, auths, probe)  # warm-up: connections, the hot-system memory
        idle = step("heartbeat, idle", lambda: heartbeat(options, base, auths, probe))
        storm = step("heartbeat, during the storm", lambda: stormy(options, base, auths, probe))
        flood = None
        if options.flood:
            flood = step(
                "heartbeat, during a flood of GET /healthz",
                lambda: stormy(options, base, auths, probe, flood=True),
            )
    finally:
        gunicorn_stop(gunicorn)
    return idle, storm, flood


def heartbeat(options, base: str, auths: list[str], probe: CpuProbe) -> Figures:
    before = probe.snapshot()
    requests, rate, p50, p99, errors = hey_fixed_rate(options, base, HEARTBEAT, "POST", auths)
    web, _ = probe.per_request(before, probe.snapshot(), requests)
    return Figures(rate, p50, p99, errors, web)


def stormy(options, base: str, auths: list[str], probe: CpuProbe, flood: bool = False) -> Figures:
    """Heartbeats while wrk posts wrong passwords; with ``flood``, while it GETs the bare
    view instead (the reference: what any request flood of that many clients costs)."""
    lead = 3  # seconds of storm before the heartbeats are measured: it is in full swing
    target = ["-s", str(STORM_LUA), base + LOGIN] if not flood else [base + "/healthz"]
    storm = subprocess.Popen(
        ["wrk", "-t1", f"-c{options.storm}", f"-d{options.duration + lead + 2}s",
         "--timeout", "30s", *target],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(lead)
        figures = heartbeat(options, base, auths, probe)
    finally:
        out, err = storm.communicate(timeout=options.duration + 60)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    figures.storm_rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    refused = int(refused.group(1)) if refused else 0
    # 200 is the form again after a wrong password (a hash was computed); non-2xx are the
    # bound's 503 refusals (no hash).
    figures.storm_answers = (
        f"{requests - refused} checked, {refused} refused" if not flood else "GET /healthz"
    )
    if err.strip():
        figures.storm_answers += f"; wrk: {err.strip()[:200]}"
    return figures


def report(results: dict, options) -> None:
    print(
        f"\ngunicorn -w {options.workers} --threads {options.threads} (gthread), "
        f"{options.systems} systems, heartbeat at {options.rate} req/s "
        f"(hey {options.hey_processes} processes), storm wrk -c{options.storm}, "
        f"{os.cpu_count()} CPUs shared by server, database and load generators\n"
    )
    header = (
        f"{'server':<16} {'load':<7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p50 ×':>6} {'p99 ×':>6} {'web CPU':>8}  {'storm req/s':>11}  storm answers / errors"
    )
    print(header)
    print("-" * len(header))
    for label, (idle, storm, flood) in results.items():
        for name, f in (("idle", idle), ("storm", storm), ("flood", flood)):
            if f is None:
                continue
            p50x = f"{f.p50_ms / idle.p50_ms:.2f}" if idle.p50_ms else ""
            p99x = f"{f.p99_ms / idle.p99_ms:.2f}" if idle.p99_ms else ""
            web = f"{f.web_cpu_ms:.2f}" if f.web_cpu_ms is not None else ""
            storm_rate = f"{f.storm_rate:.0f}" if f.storm_rate is not None else ""
            notes = "; ".join(n for n in (f.storm_answers, f.errors) if n)
            print(
                f"{label:<16} {name:<7} {f.rate:>7.0f} {f.p50_ms:>8.2f} {f.p99_ms:>8.2f} "
                f"{p50x:>6} {p99x:>6} {web:>8}  {storm_rate:>11}  {notes}"
            )
        verdict = "met" if storm.p99_ms <= 2 * idle.p99_ms else "MISSED"
        print(f"{'':<16} target: storm p99 ≤ 2× idle p99 — {verdict}")
    print(
        "\nweb CPU: milliseconds of gunicorn CPU per heartbeat (the storm's included while it"
        " runs)."
    )


if __name__ == "__main__":
    main()
