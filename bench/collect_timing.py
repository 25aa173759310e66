"""Collect authentication timing: does an unknown system key answer faster than a known one?

Creates a fresh PostgreSQL database, migrates it, registers one system, then calls the
collect API's credential checks in-process, interleaved, many times each:

- ``system_authenticate`` (HTTP Basic on every collect endpoint, and the heartbeat once
  the fast path misses) with the known key and a wrong secret, and with an unknown key;
- ``system_register`` with a secret whose public part exists, and with one whose public
  part does not.

Both calls of a pair fail the same way (401), so an attacker learns nothing from the
answer; the figures show whether the time to answer says more. Prints the median and the
mean µs per call of each and their difference (unknown − known); a few hundred ns of
difference is the HMAC that one path computed and the other did not. Never passes or
fails. Drops the database at the end.

    .venv/bin/python bench/collect_timing.py            # --rounds 5000, about a minute
"""

import contextlib
import os
import statistics
import sys
import time
from datetime import UTC, datetime

from common import database_drop, database_recreate, django_setup, run, scratch_parser, step


def main() -> None:
    parser = scratch_parser(__doc__, "cutover_bench_timing")
    parser.add_argument("--rounds", type=int, default=5_000, help="Calls per path.")
    options = parser.parse_args()
    print(
        f"collect timing benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, {options.rounds} calls per path"
    )
    database_recreate(options.server, options.database)
    os.environ["DATABASE_URL"] = f"{options.server.rstrip('/')}/{options.database}"
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    try:
        step("migrate", lambda: run([sys.executable, "manage.py", "migrate", "--noinput"]))
        django_setup()
        system = step("register a system", seed)
        pairs = step("measure", lambda: measure(system, options.rounds))
    finally:
        from django.db import connections

        connections.close_all()
        if not options.keep:
            database_drop(options.server, options.database)
    report(pairs)


def seed():
    from tests.factories import OrganizationFactory, make_system

    return make_system(OrganizationFactory(name="Bench"), name="bench")


def measure(system, rounds: int) -> dict[str, tuple[list[int], list[int]]]:
    from fleet_app import services
    from fleet_app.errors import NotAuthenticated

    wrong = f"my_{system.secret_public}.not-the-secret-{'x' * 30}"
    unknown_key = "NETH-0000-0000-0000-0000-0000-0000-0000-0000"
    unknown_secret = f"my_{'0' * 20}.not-the-secret-{'x' * 30}"
    calls = {
        "authenticate": (
            lambda: services.system_authenticate(system_key=system.system_key, system_secret=wrong),
            lambda: services.system_authenticate(system_key=unknown_key, system_secret=wrong),
        ),
        "register": (
            lambda: services.system_register(system_secret=wrong),
            lambda: services.system_register(system_secret=unknown_secret),
        ),
    }
    figures = {}
    for name, (known, unknown) in calls.items():
        samples: tuple[list[int], list[int]] = ([], [])
        for _ in range(min(rounds // 10, 1000)):  # warm up connection and caches
            for call in (known, unknown):
                with contextlib.suppress(NotAuthenticated):
                    call()
        for index in range(rounds):
            # Interleaved, alternating which goes first, so drift hits both alike.
            order = (0, 1) if index % 2 == 0 else (1, 0)
            for which in order:
                call = (known, unknown)[which]
                began = time.perf_counter_ns()
                with contextlib.suppress(NotAuthenticated):
                    call()
                samples[which].append(time.perf_counter_ns() - began)
        figures[name] = samples
    return figures


def report(pairs: dict[str, tuple[list[int], list[int]]]) -> None:
    print(f"\n{'path':<14}{'known µs':>22}{'unknown µs':>22}{'unknown − known':>22}")
    print(f"{'':<14}{'median / mean':>22}{'median / mean':>22}{'median / mean':>22}")
    for name, (known, unknown) in pairs.items():
        km, ku = statistics.median(known) / 1000, statistics.fmean(known) / 1000
        um, uu = statistics.median(unknown) / 1000, statistics.fmean(unknown) / 1000
        print(
            f"{name:<14}{f'{km:.1f} / {ku:.1f}':>22}{f'{um:.1f} / {uu:.1f}':>22}"
            f"{f'{um - km:+.2f} / {uu - ku:+.2f}':>22}"
        )
    from fleet_app import credentials

    began = time.perf_counter_ns()
    for _ in range(100_000):
        credentials.verify("my_0123456789abcdef0123.secret-part-of-the-usual-length", "0" * 64)
    print(
        f"\none credentials.verify (HMAC-SHA256 + compare_digest): "
        f"{(time.perf_counter_ns() - began) / 100_000 / 1000:.2f} µs"
    )


if __name__ == "__main__":
    main()
