"""The ingest benchmark's tables: throughput beside the bare view and the floors, then the
fleet loads (drain, visibility, sustained rate, wave), each with its goal."""

import os
import re
from dataclasses import dataclass


@dataclass
class Result:
    """One measured load: what ran, how fast, how slow, and what went wrong."""

    endpoint: str
    load: str
    rate: float
    p50_ms: float
    p99_ms: float
    errors: str = ""
    ratio: float | None = None
    target: str = ""
    # req/s ÷ the req/s of this endpoint's floor in the same run (None: it has no floor).
    floor_ratio: float | None = None
    # CPU per request of the gunicorn workers and of the PostgreSQL backends serving them:
    # steadier than req/s when something else shares the machine.
    web_cpu_ms: float | None = None
    db_cpu_ms: float | None = None


def verdict(result: Result, rate: int) -> str:
    if result.target.startswith("≥"):
        wanted = float(re.search(r"[\d.]+", result.target).group())
        ratio = result.floor_ratio if "floor" in result.target else result.ratio
        if ratio is None:
            return ""
        return "met" if ratio >= wanted else "MISSED"
    if result.target.startswith("p99"):
        return "met" if result.p99_ms < 50 and result.rate >= 0.95 * rate else "MISSED"
    return ""


def report(results: list[Result], options) -> None:
    print(
        f"\ngunicorn -w {options.workers} --threads {options.threads} (gthread), "
        f"{options.systems} systems (and {options.large:,} for the rows marked @), "
        f"PostgreSQL on loopback, {os.cpu_count()} CPUs shared by server, database and "
        "load generator\n"
    )
    header = (
        f"{'endpoint':<34} {'load':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs bare':>8} {'vs floor':>8}  {'target':<14} {'':<6} {'web CPU':>8} {'db CPU':>7}"
        "  errors"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else ""
        floor = f"{r.floor_ratio:.2f}×" if r.floor_ratio is not None else ""
        web = f"{r.web_cpu_ms:.2f}" if r.web_cpu_ms is not None else ""
        db = f"{r.db_cpu_ms:.2f}" if r.db_cpu_ms is not None else ""
        print(
            f"{r.endpoint:<34} {r.load:<22} {r.rate:>8.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{ratio:>8} {floor:>8}  {r.target:<14} {verdict(r, options.rate):<6} {web:>8} "
            f"{db:>7}  {r.errors}"
        )
    print(
        "\nweb CPU / db CPU: milliseconds of CPU per request used by the gunicorn workers "
        "and by\nthe PostgreSQL backends serving them (the db figure is a floor: see CpuProbe)."
        "\nRows marked @: the same load over 100,000 systems of the large fleet that the web"
        "\nprocesses have not served before; their target column is the ratio to the 1k row."
    )


def _statuses(load) -> str:
    return ", ".join(f"{n:,} × {code}" for code, n in sorted(load.statuses.items()))


def report_fleet(extra: dict, options) -> None:
    if drain := extra.get("drain"):
        print(
            f"\ninbox drain, one worker process: {drain.rows:,} inventories in "
            f"{drain.seconds:.1f} s = {drain.rate:,.0f}/s (goal ≥ 200/s: "
            f"{'met' if drain.rate >= 200 else 'MISSED'})"
        )
    if seen := extra.get("visibility"):
        load = seen.load
        print(
            f"inventories offered at {options.inventory_rate}/s for 20 s, one worker draining: "
            f"{load.rate:,.0f}/s accepted, p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms "
            f"({_statuses(load)}); inbox depth at most {seen.max_depth:,}, the longest wait "
            f"before recording {seen.max_age:.2f} s, inbox empty {seen.settle:.2f} s after the "
            f"load stopped (goal ≤ 5 s: {'met' if seen.max_age <= 5 else 'MISSED'})"
        )
    if sustained := extra.get("sustained"):
        load = sustained.load
        lost = sustained.answered_200 - sustained.recorded
        fives = load.count(lambda c: c >= 500)
        met = (
            load.rate >= options.sustained_rate * 0.99
            and load.p99_ms < 250
            and lost == 0
            and fives == 0
        )
        print(
            f"\nheartbeat, {options.sustained_rate:,}/s offered for "
            f"{options.sustained_seconds} s over {options.large:,} systems: achieved "
            f"{load.rate:,.0f}/s, p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms; "
            f"answers {_statuses(load)}; answered 200 {sustained.answered_200:,}, recorded "
            f"{sustained.recorded:,}, lost {lost:,} (goal ≥ {options.sustained_rate:,}/s, "
            f"p99 < 250 ms, zero lost: {'met' if met else 'MISSED'})"
            + (f"; socket errors: {load.socket_errors}" if load.socket_errors else "")
        )
    if wave := extra.get("wave"):
        fives = wave.count(lambda c: c >= 500 and c not in (503,))
        refused = wave.count(lambda c: c in (429, 503))
        print(
            f"wave: {wave.systems:,} systems, one heartbeat each, all at once from "
            f"{options.wave_connections} connections: first pass "
            f"{wave.recorded_after[0]:,} recorded in {wave.seconds_first:.1f} s "
            f"({wave.recorded_after[0] / max(wave.seconds_first, 0.001):,.0f}/s); "
            f"{len(wave.passes) - 1} retry pass(es) after {options.retry_after} s; "
            f"recorded in all {wave.recorded_after[-1]:,} in {wave.seconds_all:.1f} s; "
            f"429/503 answers {refused:,}, other 5xx {fives:,} (goal: all recorded, zero "
            f"5xx other than 503: "
            f"{'met' if wave.recorded_after[-1] == wave.systems and not fives else 'MISSED'})"
        )
        for number, load in enumerate(wave.passes):
            print(
                f"  pass {number}: {load.requests:,} sent, {load.rate:,.0f}/s, "
                f"p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms, {_statuses(load)}"
                + (f", socket errors: {load.socket_errors}" if load.socket_errors else "")
            )
