"""Drive simulated systems through the real collect API over HTTP.

The systems are created in this command's database (the server under test must use the
same one), then each registers with its secret and, round after round, sends a heartbeat
and an ns8 phonehome inventory exactly as a real cluster would. Secrets live only in this
process's memory and are never printed.
"""

import json
import logging
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
from django.core.management.base import CommandError, CommandParser

from fleet_app import services
from fleet_app.demo import ns8_inventory
from fleet_app.management.base import CutoverCommand
from fleet_app.models import Organization

OWNER_NAME = "sim-owner"


@dataclass
class SimulatedSystem:
    """One simulated system: its number (the inventory seed) and its credentials."""

    number: int
    name: str
    secret: str
    system_key: str | None = None

    def __repr__(self) -> str:
        # The secret stays out of every repr, traceback and log line.
        return f"SimulatedSystem({self.name!r}, system_key={self.system_key!r})"


@dataclass
class Tally:
    """Outcomes and latencies of a batch of requests, safe to feed from many threads."""

    outcomes: Counter = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, endpoint: str, outcome: str, seconds: float) -> None:
        with self.lock:
            self.outcomes[(endpoint, outcome)] += 1
            self.latencies.setdefault(endpoint, []).append(seconds)

    def merge(self, other: "Tally") -> None:
        self.outcomes.update(other.outcomes)
        for endpoint, values in other.latencies.items():
            self.latencies.setdefault(endpoint, []).extend(values)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def errors(self) -> Counter:
        """Failed requests by status code (or by exception name when there was none)."""
        failed: Counter = Counter()
        for (_endpoint, outcome), count in self.outcomes.items():
            if not outcome.startswith("2"):
                failed[outcome] += count
        return failed

    def all_latencies(self) -> list[float]:
        return [value for values in self.latencies.values() for value in values]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class Command(CutoverCommand):
    help = (
        "Create N simulated systems and drive them through the real collect API over HTTP: "
        "register, then heartbeats and ns8 inventories for a number of rounds. The server "
        "at --url must use the same database as this command."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--systems", type=int, required=True, help="How many systems.")
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="Base URL of the control plane."
        )
        parser.add_argument(
            "--organization",
            default="sim-fleet",
            help="Customer organization the systems are created in (created if missing).",
        )
        parser.add_argument("--rounds", type=int, default=3, help="Heartbeat rounds.")
        parser.add_argument(
            "--interval", type=float, default=5.0, help="Seconds to sleep between rounds."
        )
        parser.add_argument(
            "--concurrency", type=int, default=16, help="Requests in flight at once."
        )
        parser.add_argument(
            "--inventory-modules",
            type=int,
            default=60,
            help="Modules per inventory (60 with three nodes is about 50 KB of JSON).",
        )
        parser.add_argument(
            "--inventory-every",
            type=int,
            default=1,
            help="Send an inventory every K rounds (the first round always sends one).",
        )
        parser.add_argument(
            "--timeout", type=float, default=30.0, help="Seconds before a request gives up."
        )

    def handle(self, *args, **options) -> None:
        count: int = options["systems"]
        rounds: int = options["rounds"]
        interval: float = options["interval"]
        concurrency: int = options["concurrency"]
        modules: int = options["inventory_modules"]
        every: int = options["inventory_every"]
        base_url: str = options["url"].rstrip("/")
        self._validate(count, rounds, interval, concurrency, modules, every, options)
        # httpx logs every request at INFO: thousands of lines that drown the progress.
        logging.getLogger("httpx").setLevel(logging.WARNING)

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        with httpx.Client(base_url=base_url, timeout=options["timeout"], limits=limits) as client:
            self._check_reachable(client, base_url)
            organization = self._organization(options["organization"])
            fleet = self._create_systems(organization, count)
            total = Tally()
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                tally, elapsed = self._phase(pool, fleet, lambda s: self._register(client, s))
                total.merge(tally)
                self._progress("register", tally, elapsed)
                registered = [s for s in fleet if s.system_key is not None]
                self.stdout.write(f"registered {len(registered)} of {len(fleet)} systems")
                if not registered:
                    raise CommandError(
                        f"No system could register at {base_url} ({self._describe(tally)}): "
                        "does that server use the same database as this command?"
                    )
                for number in range(rounds):
                    if number and interval:
                        time.sleep(interval)
                    send_inventory = number % every == 0
                    tally, elapsed = self._phase(
                        pool,
                        registered,
                        lambda s, n=number, inv=send_inventory: self._round(
                            client, s, n, inv, modules
                        ),
                    )
                    total.merge(tally)
                    self._progress(f"round {number + 1}/{rounds}", tally, elapsed)
            self._summary(total, time.perf_counter() - started, interval * max(rounds - 1, 0))

    # --- arguments and setup -------------------------------------------------------------

    def _validate(self, count, rounds, interval, concurrency, modules, every, options) -> None:
        if count < 1:
            raise CommandError("--systems must be at least 1.")
        if rounds < 0:
            raise CommandError("--rounds must be 0 or more.")
        if interval < 0:
            raise CommandError("--interval must be 0 or more seconds.")
        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1.")
        if modules < 0:
            raise CommandError("--inventory-modules must be 0 or more.")
        if every < 1:
            raise CommandError("--inventory-every must be at least 1.")
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be a positive number of seconds.")
        if not options["url"].startswith(("http://", "https://")):
            raise CommandError("--url must start with http:// or https://.")
        if not options["organization"].strip():
            raise CommandError("--organization must not be empty.")

    def _check_reachable(self, client: httpx.Client, base_url: str) -> None:
        """Refuse early, before anything is written, if the server is not there."""
        try:
            response = client.get("/healthz", timeout=5.0)
        except httpx.HTTPError as error:
            raise CommandError(
                f"Cannot reach {base_url}/healthz ({type(error).__name__}): "
                "start the server or pass the right --url."
            ) from None
        if response.status_code != 200:
            raise CommandError(
                f"{base_url}/healthz answered {response.status_code} instead of 200: "
                "is this a Cutover control plane?"
            )

    def _organization(self, name: str) -> Organization:
        owner = (
            Organization.objects.filter(kind=Organization.Kind.OWNER, name=OWNER_NAME)
            .order_by("pk")
            .first()
        ) or services.organization_create(actor=None, name=OWNER_NAME, kind="owner")
        return (
            Organization.objects.filter(
                kind=Organization.Kind.CUSTOMER, name=name.strip(), parent=owner
            )
            .order_by("pk")
            .first()
        ) or services.organization_create(
            actor=None, name=name.strip(), kind="customer", parent=owner
        )

    def _create_systems(self, organization: Organization, count: int) -> list[SimulatedSystem]:
        # A run tag keeps the names of successive simulations apart.
        run = secrets.token_hex(3)
        fleet = []
        started = time.perf_counter()
        for number in range(1, count + 1):
            name = f"sim-{run}-{number:05d}"
            issued = services.system_create(
                actor=None, organization=organization, name=name, type="nethserver"
            )
            fleet.append(SimulatedSystem(number=number, name=name, secret=issued.system_secret))
        self.stdout.write(
            f"created {count} systems sim-{run}-* in {organization.name!r} "
            f"({time.perf_counter() - started:.1f} s)"
        )
        return fleet

    # --- requests --------------------------------------------------------------------------

    def _phase(
        self,
        pool: ThreadPoolExecutor,
        fleet: Iterable[SimulatedSystem],
        work: Callable[[SimulatedSystem], Tally],
    ) -> tuple[Tally, float]:
        started = time.perf_counter()
        tally = Tally()
        for result in pool.map(work, fleet):
            tally.merge(result)
        return tally, time.perf_counter() - started

    def _send(
        self, tally: Tally, endpoint: str, request: Callable[[], httpx.Response]
    ) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = request()
        except httpx.HTTPError as error:
            tally.add(endpoint, type(error).__name__, time.perf_counter() - started)
            return None
        tally.add(endpoint, str(response.status_code), time.perf_counter() - started)
        return response

    def _register(self, client: httpx.Client, system: SimulatedSystem) -> Tally:
        tally = Tally()
        response = self._send(
            tally,
            "register",
            lambda: client.post(
                "/backend/api/systems/register", json={"system_secret": system.secret}
            ),
        )
        if response is not None and response.status_code == 200:
            try:
                system.system_key = response.json()["data"]["system_key"]
            except (ValueError, KeyError, TypeError):
                # Left unregistered: the count after the register phase shows it.
                system.system_key = None
        return tally

    def _round(
        self,
        client: httpx.Client,
        system: SimulatedSystem,
        number: int,
        send_inventory: bool,
        modules: int,
    ) -> Tally:
        tally = Tally()
        auth = (system.system_key or "", system.secret)
        self._send(
            tally,
            "heartbeat",
            lambda: client.post("/collect/api/systems/heartbeat", auth=auth),
        )
        if send_inventory:
            # The same seed keeps a system's inventory stable; the uptime moves on, so
            # each inventory differs a little from the previous one, as in real life.
            body = json.dumps(
                ns8_inventory(seed=system.number, modules=modules, uptime=1000 + number * 600)
            ).encode()
            self._send(
                tally,
                "inventory",
                lambda: client.post(
                    "/collect/api/systems/inventory",
                    auth=auth,
                    content=body,
                    headers={"Content-Type": "application/json"},
                ),
            )
        return tally

    # --- output ------------------------------------------------------------------------------

    def _describe(self, tally: Tally) -> str:
        errors = tally.errors()
        if not errors:
            return "no errors"
        return "errors " + ", ".join(f"{code}×{n}" for code, n in sorted(errors.items()))

    def _progress(self, label: str, tally: Tally, elapsed: float) -> None:
        latencies = tally.all_latencies()
        rate = tally.requests / elapsed if elapsed > 0 else 0.0
        self.stdout.write(
            f"{label}: {tally.requests} requests in {elapsed:.2f} s ({rate:.1f} req/s), "
            f"{self._describe(tally)}, p50 {milliseconds(percentile(latencies, 0.5))}, "
            f"p99 {milliseconds(percentile(latencies, 0.99))}"
        )

    def _summary(self, total: Tally, elapsed: float, slept: float) -> None:
        busy = max(elapsed - slept, 1e-9)
        latencies = total.all_latencies()
        self.stdout.write("")
        self.stdout.write(
            f"summary: {total.requests} requests, {total.requests / busy:.1f} req/s "
            f"(excluding {slept:.1f} s of sleep), {self._describe(total)}, "
            f"p50 {milliseconds(percentile(latencies, 0.5))}, "
            f"p99 {milliseconds(percentile(latencies, 0.99))}"
        )
        for endpoint, values in total.latencies.items():
            outcomes = ", ".join(
                f"{outcome}×{n}"
                for (name, outcome), n in sorted(total.outcomes.items())
                if name == endpoint
            )
            self.stdout.write(
                f"  {endpoint:<10} {len(values):>7} requests  p50 "
                f"{milliseconds(percentile(values, 0.5)):>9}  p99 "
                f"{milliseconds(percentile(values, 0.99)):>9}  [{outcomes}]"
            )
        style = self.style.SUCCESS if not total.errors() else self.style.WARNING
        self.stdout.write(style("done" if not total.errors() else "done, with errors"))
