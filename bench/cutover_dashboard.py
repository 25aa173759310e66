"""Cutover dashboard benchmark: does the page cost the same at 1k and at 1M mappings?

Creates a fresh PostgreSQL database, migrates it, and for each scale fills it with
generated rows in a handful of ``INSERT … SELECT … generate_series`` statements: a few
organizations, N systems and N ``proxy_mappings`` in a realistic mix of steps (60 %
fingerprinted, 10 % confirmed, 10 % rotated, 20 % still legacy, 1 in 200 released),
spread over three months so the burn-down has a shape, plus a few hundred fingerprint
anomalies and some rotation runs. Then it times ``cutover_counters_rebuild`` (the
repair path: five GROUP BYs over every mapping), ANALYZEs, and measures in-process
with Django's test client, logged in as a superuser:

- GET /dashboard/cutover/ (the target: p50 ≤ 200 ms server time at 1M mappings, and
  the same query count as at 1k);
- GET /api/cutover/summary/, GET /api/cutover/stragglers/?kind=not_rotated and
  GET /metrics, for comparison.

It prints figures and the target, never pass or fail; with ``--explain`` it also
prints EXPLAIN ANALYZE of every query the dashboard ran at the largest scale. Then it
drops the database (``--keep`` keeps it).

    .venv/bin/python bench/cutover_dashboard.py                 # 1k and 1M, ~3 minutes
    .venv/bin/python bench/cutover_dashboard.py --scales 1000 100000 --explain
"""

import argparse
import hashlib
import os
import statistics
import sys
import time
from datetime import UTC, datetime

from common import database_drop, database_recreate, django_setup, run, scratch_parser, timed

TARGET_MS = 200.0
PAGES = {
    "dashboard": "/dashboard/cutover/",
    "api summary": "/api/cutover/summary/",
    "api stragglers": "/api/cutover/stragglers/?kind=not_rotated",
    "api mappings": "/api/cutover/mappings/",
    "api mappings ?q": "/api/cutover/mappings/?q=NETH-"
    + hashlib.md5(b"k7", usedforsecurity=False).hexdigest().upper(),
    "api ?state=rel.": "/api/cutover/mappings/?state=released",
    "/metrics": "/metrics",
}


def parse_args() -> argparse.Namespace:
    parser = scratch_parser(__doc__, "cutover_bench_dash")
    parser.add_argument("--scales", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE at the top scale")
    return parser.parse_args()


# --- data -------------------------------------------------------------------------------

# One statement per table; every NOT NULL column given (model defaults are not database
# defaults). Step by g % 100: 0-59 fingerprinted, 60-69 confirmed, 70-79 rotated, 80-99
# legacy. Imports over days 90..60 ago, rotations over the last 60 days, denser lately.
FILL = [
    "SELECT setseed(0.42)",
    """
    INSERT INTO fleet_app_system (organization_id, name, type, fqdn, version, system_key,
        secret_public, secret_digest, created_at, registered_at, last_heartbeat_at,
        last_inventory_at)
    SELECT (%(orgs)s)[1 + g %% array_length(%(orgs)s, 1)], 'ns8-' || g, 'nethserver', '', '3.9.1',
        'NETH-' || upper(md5('k' || g)), substr(md5('p' || g), 1, 32),
        md5('d' || g) || md5('e' || g), now() - interval '90 days' + (g %% 30) * interval '1 day',
        now() - interval '60 days',
        CASE WHEN g %% 100 < 70 THEN now() - random() * interval '3 days' END,
        CASE WHEN g %% 100 < 60 THEN now() - random() * interval '1 day' END
    FROM generate_series(1, %(n)s) AS g
    """,
    """
    INSERT INTO proxy_mappings (legacy_system_id, legacy_token_digest, system_id, created_at,
        legacy_last_seen_at, last_attempt_at, rotated_at, rotation_count, confirmed_at,
        fingerprint_at, migrated_at, released_at)
    SELECT md5('l' || g)::uuid::text, md5('t' || g) || md5('u' || g), s.id, s.created_at,
        s.created_at - random() * interval '30 days',
        CASE WHEN g %% 100 < 80 THEN r.at END,
        CASE WHEN g %% 100 < 80 THEN r.at END,
        CASE WHEN g %% 100 < 80 THEN 1 + (g %% 7 = 0)::int ELSE 0 END,
        CASE WHEN g %% 100 < 70 THEN r.at + interval '10 minutes' END,
        CASE WHEN g %% 100 < 60 THEN least(now(), r.at + random() * interval '2 days') END,
        CASE WHEN g %% 100 < 60 THEN r.at END,
        CASE WHEN g %% 200 = 0 THEN now() - random() * interval '20 days' END
    FROM (SELECT id, created_at, row_number() OVER (ORDER BY id) AS g FROM fleet_app_system) s
    CROSS JOIN LATERAL (
        SELECT now() - sqrt(random()) * interval '60 days' + (s.g * 0) * interval '1 s' AS at
    ) r
    """,
    """
    INSERT INTO migrations_app_fingerprintanomaly (system_id, kind, claimed_legacy_system_id,
        expected_legacy_system_id, first_seen_at, last_seen_at, occurrences, resolved_at)
    SELECT s.id, CASE WHEN g %% 3 = 0 THEN 'mismatch' ELSE 'unknown' END,
        md5('ghost' || g)::uuid::text, '', now() - interval '20 days',
        now() - random() * interval '20 days', 1 + g %% 40,
        CASE WHEN g %% 4 = 0 THEN now() - interval '1 day' END
    FROM generate_series(1, %(anomalies)s) AS g
    JOIN fleet_app_system s ON s.id = (SELECT min(id) FROM fleet_app_system) + g * 7
    """,
    """
    INSERT INTO migrations_app_rotationrun (state, phase, total, done, failed, error, log,
        created_at, updated_at, filters, cursor, chunk_size)
    SELECT CASE WHEN g = 12 THEN 'running' ELSE 'succeeded' END, '', 50000,
        CASE WHEN g = 12 THEN 21000 ELSE 50000 END, 0, '', '',
        now() - (12 - g) * interval '4 days', now(), '{}', 0, 1000
    FROM generate_series(1, 12) AS g
    """,
    # Every rotated mapping's last /proxy/credentials call: mostly 200, one in 500 refused
    # (401), one confirmed mapping in 1,000 knocking after its cutover (409).
    """
    UPDATE proxy_mappings SET
        last_attempt_outcome = CASE WHEN id %% 1000 = 1 AND confirmed_at IS NOT NULL THEN '409'
            WHEN id %% 500 = 3 THEN '401' ELSE '200' END,
        last_attempt_address = '192.0.2.' || (id %% 250),
        knocked_at = CASE WHEN id %% 1000 = 1 AND confirmed_at IS NOT NULL
            THEN now() - random() * interval '5 days' END
    WHERE last_attempt_at IS NOT NULL
    """,
    """
    INSERT INTO migrations_app_proxyattemptday (day, outcome, count)
    SELECT current_date - d, o, 1 + (d * 37 + length(o)) %% 5000
    FROM generate_series(0, 59) AS d
    CROSS JOIN unnest(ARRAY['200', '401', '403', '409', '429']) AS o
    """,
]


def fill(n: int, organizations: list[int]) -> None:
    from django.db import connection

    params = {"n": n, "orgs": organizations, "anomalies": max(3, min(n // 7 - 1, 400))}
    with connection.cursor() as cursor:
        for statement in FILL:
            cursor.execute(statement, params)


def truncate() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE proxy_mappings, migrations_app_fingerprintanomaly, "
            "migrations_app_rotationrun, migrations_app_cutoverday, "
            "migrations_app_proxyattemptday, fleet_app_system "
            "RESTART IDENTITY CASCADE"
        )


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


# --- measurement ------------------------------------------------------------------------


def measure(client, path: str, requests: int) -> tuple[float, float, int, list[str]]:
    """p50 and p95 in ms over ``requests`` timed GETs (after three warm-up ones), the
    query count of one request, and its SQL."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(3):
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
    with CaptureQueriesContext(connection) as captured:
        client.get(path)
    # Read now: every later request resets the connection's query log.
    statements = [query["sql"] for query in captured]
    timings = []
    for _ in range(requests):
        began = time.perf_counter()
        client.get(path)
        timings.append((time.perf_counter() - began) * 1000)
    timings.sort()
    p95 = timings[min(len(timings) - 1, round(0.95 * len(timings)) - 1)]
    return statistics.median(timings), p95, len(statements), statements


def measure_call(call, requests: int) -> tuple[float, float, int]:
    """The same figures for a plain function call (no request around it)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    call()
    with CaptureQueriesContext(connection) as captured:
        call()
    queries = len(captured)
    timings = []
    for _ in range(requests):
        began = time.perf_counter()
        call()
        timings.append((time.perf_counter() - began) * 1000)
    timings.sort()
    p95 = timings[min(len(timings) - 1, round(0.95 * len(timings)) - 1)]
    return statistics.median(timings), p95, queries


def explain(statements: list[str]) -> None:
    from django.db import connection

    print("\nEXPLAIN ANALYZE of the dashboard's queries at the largest scale:")
    with connection.cursor() as cursor:
        for sql in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql)
            plan = [row[0] for row in cursor.fetchall()]
            total = next((line for line in plan if line.startswith("Execution Time")), "")
            print(f"\n-- {sql[:160]}{'…' if len(sql) > 160 else ''}\n   {total}")
            for line in plan[:12]:
                print("   " + line)


def main() -> None:
    options = parse_args()
    started = time.monotonic()
    print(f"cutover dashboard benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    database_url = f"{options.server.rstrip('/')}/{options.database}"
    database_recreate(options.server, options.database)
    os.environ["DATABASE_URL"] = database_url
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")  # the test client's host name
    os.environ.pop("REDIS_URL", None)  # the page needs no cache; keep the run self-contained
    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    try:
        timed("migrate", lambda: run([sys.executable, "manage.py", "migrate", "--noinput"]))
        django_setup()
        from django.test import Client

        from fleet_app import services
        from fleet_app.models import User
        from migrations_app.cutover import selectors
        from migrations_app.cutover import services as cutover

        owner = services.organization_create(actor=None, name="Owner", kind="owner")
        organizations = [
            services.organization_create(
                actor=None, name=f"Customer {i}", kind="customer", parent=owner
            ).pk
            for i in range(5)
        ]
        root = User.objects.create_superuser("bench@example.com", "not used")
        rows = []
        last_sql: list[str] = []
        for scale in sorted(options.scales):
            print(f"\n{scale:,} systems and mappings")
            truncate()
            _, fill_s = timed(
                "fill (generate_series)", lambda scale=scale: fill(scale, organizations)
            )
            days, rebuild_s = timed("cutover_counters_rebuild", cutover.cutover_counters_rebuild)
            timed("ANALYZE", analyze)
            summary = selectors.cutover_summary()
            print(
                f"  {summary.mappings:,} mappings over {days} days: "
                f"{summary.percent_done} % fingerprinted, {summary.legacy:,} legacy, "
                f"{summary.anomalies_open} open anomalies; {summary.projection_note}"
            )
            client = Client()
            client.force_login(root)
            for label, path in PAGES.items():
                p50, p95, queries, sql = measure(client, path, options.requests)
                rows.append((scale, label, p50, p95, queries, fill_s, rebuild_s))
                if label == "dashboard":
                    last_sql = sql
            # /metrics also runs the fleet's collector; this is the cutover's share alone.
            from migrations_app.cutover.metrics import cutover_metrics

            p50, p95, queries = measure_call(lambda: list(cutover_metrics()), options.requests)
            rows.append((scale, "cutover gauges", p50, p95, queries, fill_s, rebuild_s))
        print(f"\n{'scale':>10}  {'page':<15} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}  "
              f"{'vs target':<22} {'fill s':>7} {'rebuild s':>9}")  # fmt: skip
        for scale, label, p50, p95, queries, fill_s, rebuild_s in rows:
            verdict = f"{p50 / TARGET_MS:.2f} × {TARGET_MS:.0f} ms" if label == "dashboard" else ""
            print(f"{scale:>10,}  {label:<15} {p50:>8.1f} {p95:>8.1f} {queries:>8}  "
                  f"{verdict:<22} {fill_s:>7.1f} {rebuild_s:>9.1f}")  # fmt: skip
        print(f"\ntarget: the dashboard's p50 ≤ {TARGET_MS:.0f} ms server time at 1M mappings, "
              "with the same query count as at 1k (in-process test client: no network, "
              "no gunicorn; session and user lookups included).")  # fmt: skip
        if options.explain and last_sql:
            explain(last_sql)
    finally:
        if options.keep:
            print(f"\nkept {database_url}")
        else:
            database_drop(options.server, options.database)
        print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
