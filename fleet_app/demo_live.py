"""The demo fleet, alive while the development server serves (``DEMO_LIVE``).

``make run`` loads the demo and serves it; without this, every demo system goes silent
once the heartbeat timeout has passed. A daemon thread of the ``runserver`` process
heartbeats the systems that were alive when it started, about every ten minutes each as
real clients do, and sends each its daily inventory (its latest one again, uptime moved
on), through the same services the collect API calls; other apps add what they do
for live systems through ``tick_hook_register`` (backups_app: the nightly cluster
backup). The silent, never-seen and unregistered systems stay as they are, so the
dashboards keep every status to show; a system staff suspend or delete meanwhile is
refused like at the collect API and left out.

It never runs in production: the setting is off by default and the thread starts only
under ``manage.py runserver``.
"""

import copy
import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from . import services
from .errors import FleetError
from .models import Inventory, System

log = logging.getLogger(__name__)

# Real clients call every ten minutes; each system keeps its own phase in the wave.
HEARTBEAT_EVERY = dt.timedelta(minutes=10)
INVENTORY_EVERY = dt.timedelta(days=1)
# Bounds one tick's work, so a demo left dark for days comes back over a few ticks
# instead of one long burst of writes.
INVENTORIES_PER_TICK = 20

_lock = threading.Lock()
_thread: threading.Thread | None = None
# What other apps do for the live systems at each tick (backups_app: the nightly cluster
# backup); fleet_app knows nothing of them. Each is called with the ids and the time.
_hooks: list[Callable[..., int]] = []


def tick_hook_register(hook: Callable[..., int]) -> None:
    """Have ``hook(system_ids=[…], now=…)`` called at every tick (once per hook)."""
    if hook not in _hooks:
        _hooks.append(hook)


def should_start(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """On with the setting, under runserver only, in the process that serves (the
    autoreloader's child, or the only process with --noreload)."""
    if not settings.DEMO_LIVE or len(argv) < 2 or argv[1] != "runserver":
        return False
    return environ.get("RUN_MAIN") == "true" or "--noreload" in argv


class DemoFleet:
    """The systems alive at start, heartbeated and inventoried tick after tick."""

    def __init__(self, *, now: dt.datetime | None = None):
        now = now or timezone.now()
        self.system_ids = list(
            System.objects.filter(
                registered_at__isnull=False,
                suspended_at__isnull=True,
                deleted_at__isnull=True,
                last_heartbeat_at__gte=now - System.heartbeat_timeout(),
            ).values_list("pk", flat=True)
        )

    def tick(self, *, now: dt.datetime | None = None) -> tuple[int, int]:
        """Heartbeat the systems due, send the inventories due, run the other apps'
        hooks; (heartbeats, inventories)."""
        now = now or timezone.now()
        systems = System.objects.filter(
            pk__in=self.system_ids,
            registered_at__isnull=False,
            suspended_at__isnull=True,
            deleted_at__isnull=True,
        )
        heartbeats = 0
        for system in systems.filter(last_heartbeat_at__lt=now - _jittered(HEARTBEAT_EVERY)):
            try:
                services.system_heartbeat_record(system=system)
            except FleetError:
                continue  # suspended or deleted since the query: left alone, as a client is
            heartbeats += 1
        inventories = 0
        due = systems.filter(last_inventory_at__lt=now - INVENTORY_EVERY).order_by(
            "last_inventory_at"
        )[:INVENTORIES_PER_TICK]
        for system in due:
            latest = Inventory.objects.filter(system_id=system.pk).order_by("-received_at").first()
            if latest is None:
                continue
            payload = _next_inventory(latest.data)
            services.inventory_ingest(system=system, payload=payload, size=len(json.dumps(payload)))
            inventories += 1
        live = list(systems.values_list("pk", flat=True))
        for hook in _hooks:
            hook(system_ids=live, now=now)
        return heartbeats, inventories


def _jittered(every: dt.timedelta) -> dt.timedelta:
    """A little under ``every``, so the fleet does not call in one wave per tick."""
    return every * random.uniform(0.8, 1.0)  # noqa: S311 - timing, not a secret


def _next_inventory(data: dict) -> dict:
    """The same cluster a day later: every node's uptime moved on by a day."""
    payload = copy.deepcopy(data)
    nodes = payload.get("facts", {}).get("nodes")
    if isinstance(nodes, dict):
        for node in nodes.values():
            if isinstance(node, dict) and isinstance(node.get("uptime_seconds"), int):
                node["uptime_seconds"] += int(INVENTORY_EVERY.total_seconds())
    return payload


def _run(tick_seconds: float) -> None:
    time.sleep(min(tick_seconds, 2.0))  # let the server finish starting
    fleet = None
    while True:
        close_old_connections()
        try:
            if fleet is None:
                fleet = DemoFleet()
                log.info("Demo fleet: keeping %d live systems alive.", len(fleet.system_ids))
            fleet.tick()
        except Exception:
            # A demo that stops heartbeating is better than a server that stops serving.
            log.exception("Demo fleet: a tick failed; trying again at the next one.")
        finally:
            close_old_connections()
        time.sleep(tick_seconds)


def start() -> threading.Thread:
    """Start the simulator thread once per process."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(
                target=_run,
                args=(settings.DEMO_LIVE_TICK_SECONDS,),
                name="demo-fleet",
                daemon=True,
            )
            _thread.start()
        return _thread
