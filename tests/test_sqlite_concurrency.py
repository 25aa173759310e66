"""The embedded database (SQLite, `make run`) under concurrent writers: WAL, a busy
timeout and transactions that take the write lock when they begin, so a writer waits its
turn instead of failing with "database is locked".

Run in a subprocess on a file database with the project's own settings (the suite's
database may be PostgreSQL).
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import threading
import django
django.setup()
from django.db import connection, connections, transaction

with connection.cursor() as cursor:
    cursor.execute("PRAGMA journal_mode")
    print("journal_mode", cursor.fetchone()[0])
    cursor.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    cursor.execute("INSERT INTO counter (id, n) VALUES (1, 0)")
    cursor.execute("CREATE TABLE seen (id INTEGER PRIMARY KEY AUTOINCREMENT, worker INTEGER)")

errors = []
start = threading.Barrier(8)


def work(worker):
    start.wait()
    try:
        for _ in range(40):
            # Read, then write in the same transaction: the case a deferred transaction
            # cannot upgrade while another writer holds the lock.
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT n FROM counter WHERE id = 1")
                n = cursor.fetchone()[0]
                cursor.execute("UPDATE counter SET n = %s WHERE id = 1", [n + 1])
            # And autocommit writes beside them.
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO seen (worker) VALUES (%s)", [worker])
    except Exception as error:
        errors.append(f"{type(error).__name__}: {error}")
    finally:
        connections.close_all()


threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
with connection.cursor() as cursor:
    cursor.execute("SELECT n FROM counter WHERE id = 1")
    print("counter", cursor.fetchone()[0])
    cursor.execute("SELECT COUNT(*) FROM seen")
    print("rows", cursor.fetchone()[0])
print("errors", len(errors), errors[:3])
"""


def test_concurrent_writers_never_see_database_is_locked(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DEBUG"}
    }
    env |= {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
    }
    result = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["journal_mode"] == "wal"
    assert lines["errors"] == "0 []", result.stdout
    # No lost update: every read-modify-write saw the one before it.
    assert lines["counter"] == "320"
    assert lines["rows"] == "320"
