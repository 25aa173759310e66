"""The import reads in constant memory: a file ten times bigger does not grow the
command's peak RSS by more than a few megabytes (it used to hold the whole file)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
HEADER = "legacy_system_id,legacy_token,name,organization,type,legacy_last_seen_at\n"


def write_csv(path: Path, megabytes: int) -> Path:
    # Rows naming no known organization: refused after every check of the reader and the
    # duplicate guard, so the test measures the stream, not the inserts.
    with path.open("w", newline="") as out:
        out.write(HEADER)
        n = 0
        while out.tell() < megabytes * 1_000_000:
            out.write(
                "".join(
                    f"LEG-{n + i:09d},{'ab' * 20},legacy system {n + i},Nowhere,ns8,"
                    "2026-10-01T08:00:00Z\n"
                    for i in range(5000)
                )
            )
            n += 5000
    return path


def child_database_url() -> str:
    """The test database, for a child process: PostgreSQL's, or SQLite's file."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    return f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"


def peak_rss_kib(path: Path) -> int:
    # DEBUG off as in production: with it on, Django keeps the last 9,000 statements.
    env = dict(os.environ, DEBUG="0", DATABASE_URL=child_database_url())
    errors = path.with_suffix(".err")
    with errors.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "manage.py", "import_legacy_mappings", str(path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        _, status, usage = os.wait4(child.pid, 0)
    tail = errors.read_text()[-300:]
    assert os.waitstatus_to_exitcode(status) == 1, tail  # every row refused
    assert "were refused" in tail
    return usage.ru_maxrss


# Committed, not in a test transaction: on SQLite an open write transaction would hold the
# child's writes back ("database is locked").
@pytest.mark.django_db(transaction=True)
def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    small = peak_rss_kib(write_csv(tmp_path / "small.csv", 1))
    large = peak_rss_kib(write_csv(tmp_path / "large.csv", 10))

    assert large - small < 30 * 1024, f"{small} KiB for 1 MB, {large} KiB for 10 MB"
