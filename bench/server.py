"""The server side of the load benchmarks: gunicorn started on the benchmark's settings,
waited for and stopped, and the CPU each process spent (Linux /proc)."""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from common import ROOT, SERVER_ENV, admin_connection

BIN = Path(sys.executable).parent
BARE = "/healthz"


# --- gunicorn ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_start(options: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        **SERVER_ENV,
        "DEBUG": "0",
        "CONN_MAX_AGE": "60",
        "LOG_LEVEL": "WARNING",
        # The product's settings with the floor views routed (bench/floor.py).
        "DJANGO_SETTINGS_MODULE": "bench.settings",
    }
    with log.open("w") as out:
        return subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "controlplane.wsgi",
                "-w",
                str(options.workers),
                "--threads",
                str(options.threads),
                "-b",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                # Above wrk's and hey's connection counts: keep-alive connections each hold
                # a slot in the gthread worker.
                "--worker-connections",
                "1000",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"gunicorn exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + BARE, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    sys.exit(f"gunicorn did not answer {base}{BARE} within 30 s:\n{log.read_text()[-2000:]}")


def worker_stop(process: subprocess.Popen) -> None:
    """Stop a Celery worker as its supervisor would (SIGTERM: finish the task in hand)."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def gunicorn_stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- CPU accounting (Linux /proc) ---------------------------------------------------------


def machine_busy(seconds: float = 1.0) -> float:
    """Percent of all CPUs busy over ``seconds``, from /proc/stat (0 if unavailable)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return 0.0
    return 100.0 * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of /proc/<pid>/stat.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuProbe:
    """CPU time used by the gunicorn workers and by this database's PostgreSQL backends.

    A backend that exits between two snapshots (CONN_MAX_AGE recycles connections every
    minute) takes its CPU time with it, so the database figure is a floor.
    """

    def __init__(self, master_pid: int, server: str, database: str) -> None:
        self.master_pid = master_pid
        self.server = server
        self.database = database

    def _workers(self) -> list[int]:
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.master_pid:
                    pids.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return pids

    def _backends(self) -> list[int]:
        with admin_connection(self.server) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.database],
            ).fetchall()
        return [pid for (pid,) in rows]

    def snapshot(self) -> dict[str, dict[int, float]]:
        taken = {}
        for kind, pids in (("web", self._workers()), ("db", self._backends())):
            taken[kind] = {pid: cpu for pid in pids if (cpu := _cpu_seconds(pid)) is not None}
        return taken

    @staticmethod
    def per_request(before: dict, after: dict, requests: int) -> tuple[float | None, ...]:
        """Milliseconds of web and database CPU per request between two snapshots."""
        if not requests:
            return None, None
        costs = []
        for kind in ("web", "db"):
            # A process absent from the first snapshot started in between: all its CPU
            # time falls inside the window.
            used = sum(cpu - before[kind].get(pid, 0.0) for pid, cpu in after[kind].items())
            costs.append(1000 * used / requests)
        return tuple(costs)
