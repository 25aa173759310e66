"""Legacy import memory benchmark: peak RSS of ``import_legacy_mappings`` on a big file.

Creates a fresh PostgreSQL database and migrates it, creates one customer, writes a
mappings CSV of about ``--megabytes`` MB (and a users CSV of ``--accounts`` rows) in a
temporary folder, then runs each command in a subprocess, dry run and ``--apply``, and
prints for each the peak RSS (``ru_maxrss`` of the child), its growth over a Django
process that imported nothing (``import_legacy_mappings`` on a header-only file), the
time and rows per second. It prints figures and never passes or fails.

    .venv/bin/python bench/import_memory.py             # --help for the options
"""

import os
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import ROOT, database_drop, database_recreate, django_setup, run, scratch_parser, step

BIN = Path(sys.executable).parent


def main() -> None:
    parser = scratch_parser(__doc__, "cutover_bench_import")
    parser.add_argument("--megabytes", type=int, default=300, help="Size of the mappings CSV.")
    parser.add_argument("--accounts", type=int, default=200_000, help="Rows of the users CSV.")
    parser.add_argument("--no-apply", action="store_true", help="Only the dry runs.")
    options = parser.parse_args()
    print(f"import memory benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs")
    database_recreate(options.server, options.database)
    os.environ["DATABASE_URL"] = f"{options.server.rstrip('/')}/{options.database}"
    os.environ["DEBUG"] = "0"
    try:
        step("migrate", lambda: run([BIN / "python", "manage.py", "migrate", "--noinput"]))
        django_setup()
        from fleet_app import services

        owner = services.organization_create(actor=None, name="Owner", kind="owner")
        customer = services.organization_create(
            actor=None, name="Customer", kind="customer", parent=owner
        )
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            empty = folder / "empty.csv"
            empty.write_text("legacy_system_id,legacy_token,name,type,legacy_last_seen_at\n")
            mappings, rows = step("write the mappings CSV", lambda: mappings_csv(folder, options))
            users = step("write the users CSV", lambda: users_csv(folder, options.accounts))
            floor = measure(["import_legacy_mappings", empty, "--organization", customer.slug])
            print(f"\nDjango process, nothing imported: peak RSS {floor / 1024:.0f} MB\n")
            size = mappings.stat().st_size / 1e6
            print(f"{'run':<44} {'peak MB':>8} {'growth':>7} {'time s':>7} {'rows/s':>8}")
            runs = [
                (f"mappings dry run, {size:.0f} MB, {rows:,} rows", mappings, rows, False),
                (f"accounts dry run, {options.accounts:,} users", users, options.accounts, False),
            ]
            if not options.no_apply:
                runs += [
                    (f"mappings --apply, {size:.0f} MB, {rows:,} rows", mappings, rows, True),
                    (
                        f"accounts --apply, {options.accounts:,} users",
                        users,
                        options.accounts,
                        True,
                    ),
                ]
            for label, path, count, apply in runs:
                command = "import_legacy_accounts" if path == users else "import_legacy_mappings"
                args = [command, path] + (
                    [] if path == users else ["--organization", customer.slug]
                )
                began = time.monotonic()
                peak = measure(args + (["--apply"] if apply else []))
                elapsed = time.monotonic() - began
                print(
                    f"{label:<44} {peak / 1024:>8.0f} {(peak - floor) / 1024:>7.0f} "
                    f"{elapsed:>7.1f} {count / elapsed:>8,.0f}",
                    flush=True,
                )
    finally:
        if not options.keep:
            database_drop(options.server, options.database)


def mappings_csv(folder: Path, options) -> tuple[Path, int]:
    path = folder / "mappings.csv"
    target = options.megabytes * 1_000_000
    rows = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("legacy_system_id,legacy_token,name,type,legacy_last_seen_at\n")
        while out.tell() < target:
            block = []
            for _ in range(10_000):
                rows += 1
                block.append(
                    f"LEG-{rows:09d},{secrets.token_hex(20)},legacy system {rows},nethserver,"
                    "2026-10-01T08:00:00Z\n"
                )
            out.write("".join(block))
    return path, rows


def users_csv(folder: Path, count: int) -> Path:
    path = folder / "users.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("legacy_id,email,is_active,date_joined,full_name\n")
        for n in range(count):
            out.write(f"u{n},user{n}@example.com,true,2020-01-01,User {n}\n")
    return path


def measure(args: list) -> int:
    """Peak RSS in KiB of ``manage.py *args`` run in a child process."""
    child = subprocess.Popen(
        [BIN / "python", "manage.py", *[str(a) for a in args]],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{args[0]} failed: {child.stderr.read().decode()[-2000:]}")
    child.stderr.close()
    return usage.ru_maxrss


if __name__ == "__main__":
    main()
