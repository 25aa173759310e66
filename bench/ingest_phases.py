"""The phases of the ingest benchmark beyond plain throughput: the inbox drain by one real
worker, an inventory's time to be recorded under load, and, on a million systems, the
sustained heartbeat rate and the wave (see bench/ingest.py for the whole run)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common import step
from ingest_fleet import (
    FleetLoad,
    InboxWatch,
    auth_file,
    fleet_credentials,
    fleet_wrk,
    inbox_state,
    recorded_since,
    task_send,
    worker_start,
    worker_stop,
)

INBOX_DRAIN_TASK = "fleet_app.tasks.inventory_inbox_drain"
HEARTBEAT = "/collect/api/systems/heartbeat"
INVENTORY = "/collect/api/systems/inventory"


@dataclass
class Drain:
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def drain_rate(workdir: Path, timeout: float = 180) -> Drain:
    """Start one worker process (one child) on the inbox the inventory loads filled, send
    it the drain task (as beat's sweep does), and time it from the first row it records
    until the inbox is empty."""
    rows, _ = inbox_state()
    worker = worker_start(workdir / "worker-drain.log")
    try:
        task_send(INBOX_DRAIN_TASK)
        deadline = time.monotonic() + timeout
        started = None
        left = rows
        while time.monotonic() < deadline:
            left, _ = inbox_state()
            if started is None and left < rows:
                started = time.monotonic()
            if left == 0:
                break
            time.sleep(0.05)
        ended = time.monotonic()
    finally:
        worker_stop(worker)
    return Drain(rows - left, ended - (started or ended))


@dataclass
class Visibility:
    load: FleetLoad
    max_depth: int
    max_age: float  # seconds the longest-waiting accepted inventory waited
    settle: float  # seconds after the load stopped until the inbox was empty


def inventory_visibility(
    base: str, auths: Path, body: Path, placeholder: str, workdir: Path, *, rate: float
) -> Visibility:
    """Offer inventories at ``rate`` for 20 s with one worker draining, sampling how long
    the oldest accepted row has waited: the time an inventory takes to be recorded."""
    worker = worker_start(workdir / "worker-visibility.log")
    try:
        time.sleep(3)  # the worker's start is not part of the measure
        with InboxWatch() as watch:
            load = fleet_wrk(
                base + INVENTORY,
                auths,
                mode="rate",
                rate=rate,
                threads=2,
                connections=32,
                seconds=20,
                body=body,
                placeholder=placeholder,
            )
            stopped = time.monotonic()
            while inbox_state()[0] and time.monotonic() - stopped < 120:
                time.sleep(0.1)
            settle = time.monotonic() - stopped
    finally:
        worker_stop(worker)
    return Visibility(load, watch.max_depth, watch.max_age, settle)


@dataclass
class Sustained:
    load: FleetLoad
    answered_200: int
    recorded: int


def heartbeat_sustained(
    base: str, workdir: Path, *, first: int, rate: float, seconds: int
) -> Sustained:
    """``rate`` heartbeats/s for ``seconds`` from distinct systems (each at most once),
    then the systems whose heartbeat the database holds, against the 200 answers."""
    count = int(rate * seconds)
    numbers = range(first, first + count)
    auths = auth_file(workdir / "sustained.txt", numbers)
    since = datetime.now(UTC)
    load = step(
        f"fleet.lua rate {rate:g}/s {seconds}s heartbeat, {count} distinct systems",
        lambda: fleet_wrk(
            base + HEARTBEAT,
            auths,
            mode="rate",
            rate=rate,
            threads=4,
            connections=128,
            seconds=seconds,
        ),
    )
    recorded = len(recorded_since(numbers, since))
    return Sustained(load, load.count(lambda c: c == 200), recorded)


@dataclass
class Wave:
    systems: int
    passes: list[FleetLoad]
    recorded_after: list[int]  # systems recorded after each pass
    seconds_first: float  # the first pass, from start until it stopped recording
    seconds_all: float  # until the last pass ended

    def count(self, predicate) -> int:
        return sum(load.count(predicate) for load in self.passes)


def heartbeat_wave(
    base: str, workdir: Path, *, first: int, systems: int, connections: int, retry_after: int
) -> Wave:
    """One heartbeat from each of ``systems`` distinct systems, all at once, as timers
    that started together send them; then, like ``curl --retry`` after ``Retry-After``,
    up to three more passes for the systems not recorded."""
    numbers = range(first, first + systems)
    since = datetime.now(UTC)
    passes, after = [], []
    started = time.monotonic()
    missing = list(numbers)
    first_seconds = 0.0
    for attempt in range(4):
        if attempt:
            time.sleep(retry_after)
        auths = auth_file(workdir / f"wave-{attempt}.txt", missing)
        sending = len(missing)
        load = step(
            f"fleet.lua once: {sending} systems, -c{connections}",
            lambda a=auths, n=sending: fleet_wrk(
                base + HEARTBEAT,
                a,
                mode="once",
                rate=1,
                threads=min(4, n),
                connections=max(min(4, n), min(connections, n)),
                seconds=240,
                stop_when=_stalled(numbers, since, target=systems),
            ),
        )
        passes.append(load)
        done = recorded_since(numbers, since)
        after.append(len(done))
        if not attempt:
            first_seconds = load.seconds
        missing = [n for n in numbers if n not in done]
        if not missing:
            break
    return Wave(systems, passes, after, first_seconds, time.monotonic() - started)


def _stalled(numbers: range, since, *, target: int, quiet: float = 3.0):
    """A stop_when for a wave pass: every system recorded, or nothing new for ``quiet`` s."""
    from django.db import connection

    from fleet_app.models import System

    first, last = fleet_credentials(numbers.start)[0], fleet_credentials(numbers.stop - 1)[0]
    state = {"count": -1, "changed": time.monotonic(), "polled": 0.0}

    def check() -> bool:
        now = time.monotonic()
        if now - state["polled"] < 1.0:
            return False
        state["polled"] = now
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*) FROM {System._meta.db_table}"  # noqa: S608
                " WHERE system_key BETWEEN %s AND %s AND last_heartbeat_at >= %s",
                [first, last, since],
            )
            (count,) = cursor.fetchone()
        if count != state["count"]:
            state["count"], state["changed"] = count, now
        return count >= target or now - state["changed"] > quiet

    return check
