"""Cluster backup upload: 1 GiB through the real HTTP stack beside ``cp`` of the same file.

Creates a scratch PostgreSQL database, migrates it, creates and registers one system,
writes a 1 GiB file, starts gunicorn on loopback (one sync worker, local-folder storage
on the same filesystem as the file) and then, for each round:

a) ``cp`` of the file to a new file, and ``cp`` followed by an fsync of the copy (the
   server fsyncs each backup before acknowledging it: BACKUP_LOCAL_FSYNC);
b) ``POST {collect_url}/backups`` of the same file with curl (streamed from disk, no
   ``Expect: 100-continue``), timed from the first byte sent to the 201 answer;
c) the same POST to a bare WSGI app under the same gunicorn settings that only reads
   the body in the same chunks, hashes, writes and fsyncs it: the ceiling of any Python
   endpoint on this stack, so what the endpoint itself costs shows apart from the stack.

It prints the throughput of each, the upload/cp ratio (target ≥ 0.5× cp) and the
gunicorn worker's peak RSS growth over the upload, from /proc/<pid>/status (VmHWM reset
through /proc/<pid>/clear_refs before each upload; target ≤ 64 MiB). It never passes or
fails. The machine's load is printed before and after each round: figures taken while
something else is busy are noted as such. Then it stops gunicorn and drops the database.

    .venv/bin/python bench/backup_upload.py            # 1 GiB, 3 rounds
    .venv/bin/python bench/backup_upload.py --help
"""

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_SERVER,
    ROOT,
    SERVER_ENV,
    database_drop,
    database_recreate,
    django_setup,
    run,
    step,
)

BIN = ROOT / ".venv" / "bin"
MIB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="upload size (MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", default=DEFAULT_SERVER, help="PostgreSQL server URL")
    parser.add_argument("--database", default="cutover_bench_bkp")
    parser.add_argument("--no-fsync", action="store_true", help="BACKUP_LOCAL_FSYNC=false")
    parser.add_argument(
        "--chunk-kib",
        type=int,
        default=0,
        help="CLUSTER_BACKUP_CHUNK_BYTES (default: the setting's)",
    )
    return parser.parse_args()


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_file(path: Path, size: int) -> None:
    # Random bytes, so nothing on the way can take a shortcut on compressible data.
    block = os.urandom(4 * MIB)
    with path.open("wb") as handle:
        written = 0
        while written < size:
            part = block[: min(len(block), size - written)]
            handle.write(part)
            written += len(part)
        handle.flush()
        os.fsync(handle.fileno())


def seed_system() -> tuple[str, str]:
    django_setup()
    from fleet_app import services

    owner = services.organization_create(actor=None, name="Bench", kind="owner")
    issued = services.system_create(actor=None, organization=owner, name="bench-cluster")
    services.system_register(system_secret=issued.system_secret)
    from django.db import connections

    connections.close_all()
    return issued.system.system_key, issued.system_secret


def gunicorn_start(
    port: int, env: dict, log: Path, app: str = "controlplane.wsgi", chdir: Path = ROOT
) -> subprocess.Popen:
    return subprocess.Popen(
        [BIN / "gunicorn", app, "--chdir", str(chdir), "--workers", "1", "--worker-class", "sync",
         "--timeout", "600", "--bind", f"127.0.0.1:{port}", "--log-file", str(log)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def worker_pid(master: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("gunicorn started no worker")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def upload(url: str, auth: str, path: Path) -> tuple[float, dict]:
    """POST the file with curl; seconds from start to the answer, and the answer."""
    began = time.monotonic()
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail-with-body", "-X", "POST",
         "-H", f"Authorization: {auth}", "-H", "Content-Type: application/octet-stream",
         "-H", "X-Filename: bench.tar.gz.gpg", "-H", "Expect:",
         "--upload-file", str(path), url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - began
    if done.returncode != 0:
        raise RuntimeError(f"upload failed: {done.stdout} {done.stderr}")
    return elapsed, json.loads(done.stdout)


BARE_APP = """
import hashlib, os

def app(environ, start_response):
    size, read, digest = int(environ["CONTENT_LENGTH"]), 0, hashlib.sha256()
    chunk = int(os.environ.get("CLUSTER_BACKUP_CHUNK_BYTES", 1024 * 1024))
    with open(os.environ["BARE_TARGET"], "wb") as handle:
        while read < size:
            data = environ["wsgi.input"].read(min(chunk, size - read))
            if not data:
                break
            read += len(data)
            digest.update(data)
            handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.unlink(os.environ["BARE_TARGET"])
    start_response("201 Created", [("Content-Type", "application/json")])
    return [('{"data": {"size": %d}}' % read).encode()]
"""


def copy(source: Path, target: Path, *, fsync: bool) -> float:
    target.unlink(missing_ok=True)
    os.sync()  # every measurement starts with no dirty pages to be throttled behind
    began = time.monotonic()
    subprocess.run(["cp", str(source), str(target)], check=True)
    if fsync:
        subprocess.run(["sync", "--data", str(target)], check=True)
    elapsed = time.monotonic() - began
    target.unlink()
    return elapsed


def main() -> None:
    options = parse_args()
    size = options.size_mib * MIB
    started = time.monotonic()
    fsync = not options.no_fsync
    print(
        f"backup upload benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{options.size_mib} MiB, {options.rounds} rounds, server fsync {'on' if fsync else 'off'}"
    )
    print(f"  before start: {load()}")
    database_url = f"{options.server.rstrip('/')}/{options.database}"
    database_recreate(options.server, options.database)
    gunicorn = bare = None
    rounds = []
    try:
        os.environ["DATABASE_URL"] = database_url
        os.environ["DEBUG"] = "0"
        # The system is registered here and checked by the server: one digest key.
        os.environ.update(SERVER_ENV)
        step("migrate", lambda: run([BIN / "python", "manage.py", "migrate", "--noinput"]))
        key, secret = step("register a system", seed_system)
        auth = "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()
        with tempfile.TemporaryDirectory(prefix="cutover-bench-bkp-", dir="/var/tmp") as tmp:
            work = Path(tmp)
            source = work / "backup.bin"
            step(f"write the {options.size_mib} MiB file", lambda: make_file(source, size))
            port = free_port()
            env = {
                **os.environ,
                **SERVER_ENV,
                "BACKUP_STORAGE_URL": "",
                "BACKUP_LOCAL_ROOT": str(work / "store"),
                "BACKUP_LOCAL_FSYNC": "true" if fsync else "false",
                "CLUSTER_BACKUP_RATE_COUNT": "1000",
                "CLUSTER_BACKUP_KEEP_COUNT": "1",
                "REDIS_URL": "",
                "LOG_LEVEL": "WARNING",
            }
            if options.chunk_kib:
                env["CLUSTER_BACKUP_CHUNK_BYTES"] = str(options.chunk_kib * 1024)
            gunicorn = step("start gunicorn (1 sync worker)", lambda: gunicorn_start(
                port, env, work / "gunicorn.log"
            ))  # fmt: skip
            worker = worker_pid(gunicorn.pid)
            (work / "bare_app.py").write_text(BARE_APP)
            bare_port = free_port()
            bare = gunicorn_start(
                bare_port,
                {**env, "BARE_TARGET": str(work / "bare.bin")},
                work / "bare.log",
                app="bare_app:app",
                chdir=work,
            )
            bare_url = f"http://127.0.0.1:{bare_port}/"
            url = f"http://127.0.0.1:{port}/collect/api/systems/backups"
            small = work / "small.bin"
            small.write_bytes(os.urandom(64 * 1024))
            deadline = time.monotonic() + 30
            while True:  # warm-up: the app is imported and connected before measuring
                try:
                    upload(url, auth, small)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            for number in range(1, options.rounds + 1):
                print(f"round {number}: {load()}")
                cp_plain = copy(source, work / "copy.bin", fsync=False)
                cp_synced = copy(source, work / "copy.bin", fsync=True)
                # Reset the peak: VmHWM then tracks this upload only.
                Path(f"/proc/{worker}/clear_refs").write_text("5")
                rss_before = status_kib(worker, "VmRSS")
                os.sync()
                seconds, answer = upload(url, auth, source)
                peak = status_kib(worker, "VmHWM")
                assert answer["data"]["size"] == size, answer
                os.sync()
                bare_seconds, bare_answer = upload(bare_url, auth, source)
                assert bare_answer["data"]["size"] == size, bare_answer
                rounds.append(
                    {
                        "cp": size / MIB / cp_plain,
                        "cp_fsync": size / MIB / cp_synced,
                        "upload": size / MIB / seconds,
                        "bare": size / MIB / bare_seconds,
                        "growth_mib": (peak - rss_before) / 1024,
                        "rss_mib": rss_before / 1024,
                    }
                )
                r = rounds[-1]
                print(
                    f"  cp {r['cp']:.0f} MiB/s, cp+fsync {r['cp_fsync']:.0f} MiB/s, "
                    f"upload {r['upload']:.0f} MiB/s → {r['upload'] / r['cp']:.2f}× cp, "
                    f"{r['upload'] / r['cp_fsync']:.2f}× cp+fsync; "
                    f"bare WSGI {r['bare']:.0f} MiB/s; worker RSS "
                    f"{r['rss_mib']:.0f} MiB, peak growth {r['growth_mib']:.1f} MiB"
                )
                print(f"  after: {load()}")
            for server in (gunicorn, bare):
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
            gunicorn = bare = None
    finally:
        for server in (gunicorn, bare):
            if server is not None:
                server.kill()
                server.wait()
        database_drop(options.server, options.database)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    print("\nmedian of the rounds")
    print(f"  cp                 {median('cp'):7.0f} MiB/s")
    print(f"  cp + fsync         {median('cp_fsync'):7.0f} MiB/s")
    print(f"  upload (HTTP)      {median('upload'):7.0f} MiB/s")
    print(
        f"  bare WSGI upload   {median('bare'):7.0f} MiB/s   (read, hash, write, fsync; no Django)"
    )
    ratio = statistics.median(r["upload"] / r["cp"] for r in rounds)
    ratio_sync = statistics.median(r["upload"] / r["cp_fsync"] for r in rounds)
    print(f"  upload / cp        {ratio:7.2f}×   (target ≥ 0.5×)")
    print(f"  upload / cp+fsync  {ratio_sync:7.2f}×")
    bare_ratio = statistics.median(r["upload"] / r["bare"] for r in rounds)
    print(f"  upload / bare WSGI {bare_ratio:7.2f}×")
    print(f"  worker peak RSS growth {max(r['growth_mib'] for r in rounds):.1f} MiB (max)"
          "   (target ≤ 64 MiB)")  # fmt: skip
    print(f"\ntotal run time {time.monotonic() - started:.0f} s; {load()}")


if __name__ == "__main__":
    main()
