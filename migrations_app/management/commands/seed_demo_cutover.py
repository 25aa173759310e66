"""Load an idempotent demo cutover on top of the demo fleet (``manage.py seed_demo``).

Imports legacy mappings for the demo customers and spreads them over the last three
weeks of a cutover in progress: most fingerprinted (some of those released), some
confirmed, some rotated and never used, the rest still on legacy credentials, plus two
fingerprint anomalies; then rebuilds the day counters from those stamps, so the cutover
dashboard has a burn-down and a projection to show.

The story holds together on every page: a confirmed system heartbeats (and has the
activity days to show for it), a fingerprinted one sent the inventory that carried its
fingerprint (ingested by the real service, which stamped it), and the two anomalies
come from inventories that claimed the wrong legacy id. ``--refresh`` brings the
heartbeats of an old demo up to now.
"""

import datetime as dt
import json
import random
import secrets

from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone

from fleet_app import services as fleet
from fleet_app.demo import ns8_inventory
from fleet_app.management.base import CutoverCommand
from fleet_app.models import Inventory, Organization, System, SystemActivityDay

from ...cutover import services
from ...models import FingerprintAnomaly, LegacyMapping, ProxyAttemptDay

PREFIX = "demo-legacy-"
MAPPINGS = 240
DAYS = 21
# The fleet dashboard's chart covers this many days.
ACTIVITY_DAYS = 30
INVENTORY_MODULES = 8
# Two confirmed systems whose inventories claim a legacy id that is not theirs.
ANOMALIES = (("ghost-7f3a", "unknown"), (f"{PREFIX}0007", "mismatch"))


class Command(CutoverCommand):
    help = "Load a demo cutover (legacy mappings in every state) on top of the demo fleet."

    def add_arguments(self, parser):
        parser.add_argument(
            "--refresh",
            action="store_true",
            help="When the demo cutover is already loaded, move the heartbeats of its "
            "confirmed systems up to now, so a demo loaded days ago looks alive again.",
        )

    def handle(self, *args, refresh: bool = False, **options):
        owner = Organization.objects.filter(kind="owner", name="Cutover Demo Owner").first()
        if owner is None:
            raise CommandError("Run manage.py seed_demo first: the demo fleet is missing.")
        now = timezone.now()
        if LegacyMapping.objects.filter(legacy_system_id__startswith=PREFIX).exists():
            if refresh:
                with transaction.atomic():
                    count = self._refresh(now)
                self.stdout.write(f"Demo cutover: already loaded; {count} heartbeats moved to now.")
            else:
                self.stdout.write("Demo cutover: already loaded.")
            return
        customers = list(
            Organization.objects.filter(kind="customer", path__startswith=owner.path).order_by(
                "name"
            )
        )
        rng = random.Random(8)  # noqa: S311 - demo data, the same every time
        with transaction.atomic():
            report = services.mappings_import(
                rows=(
                    (
                        n,
                        {
                            "legacy_system_id": f"{PREFIX}{n:04d}",
                            # Nobody will present these tokens: the demo only needs digests.
                            "legacy_token": secrets.token_hex(16),
                            "name": f"legacy-{customers[n % len(customers)].name.split()[0]}-"
                            f"{n:03d}".lower(),
                            "type": "nethserver",
                            "organization": str(customers[n % len(customers)].pk),
                        },
                    )
                    for n in range(1, MAPPINGS + 1)
                ),
                apply=True,
            )
            if report.errors:
                raise CommandError(f"Demo import failed: {report.errors[0][1]}")
            activity: list[SystemActivityDay] = []
            mappings = LegacyMapping.objects.filter(legacy_system_id__startswith=PREFIX)
            for mapping in mappings.select_related("system").order_by("pk"):
                activity += self._story(mapping, rng, now)
            self._anomalies(now)
            SystemActivityDay.objects.bulk_create(activity, ignore_conflicts=True, batch_size=1000)
            days = services.cutover_counters_rebuild()
            # The calls' day counts, one per mapping's last call (the demo's history).
            calls = (
                LegacyMapping.objects.filter(last_attempt_at__isnull=False)
                .annotate(day=TruncDate("last_attempt_at"))
                .values("day", "last_attempt_outcome")
                .annotate(n=Count("pk"))
            )
            ProxyAttemptDay.objects.bulk_create(
                ProxyAttemptDay(day=row["day"], outcome=row["last_attempt_outcome"], count=row["n"])
                for row in calls
            )
        self.stdout.write(
            f"Demo cutover: {MAPPINGS} legacy mappings over {days} days of a cutover in progress."
        )

    def _story(
        self, mapping: LegacyMapping, rng: random.Random, now: dt.datetime
    ) -> list[SystemActivityDay]:
        """Backdate one mapping and its system along the path it has come so far; return
        the system's activity days."""
        created = now - dt.timedelta(days=DAYS, hours=rng.randint(0, 12))
        roll = rng.random()
        fields: dict = {"created_at": created, "legacy_last_seen_at": now - dt.timedelta(
            minutes=rng.randint(5, 60 * 24 * 3))}  # fmt: skip
        # The system row was made by the import, on the day the mapping was.
        system: dict = {"created_at": created}
        fingerprint_at = migrated_at = None
        activity = []
        if roll < 0.75:  # rotated at some point of the last three weeks
            # Early days are slow, then the fleet's upgrade wave picks up.
            rotated = created + dt.timedelta(hours=DAYS * 24 * (rng.random() ** 0.6))
            rotated = min(rotated, now - dt.timedelta(hours=1))
            fields |= {
                "rotated_at": rotated,
                "rotation_count": 1,
                "last_attempt_at": rotated,
                "last_attempt_outcome": "200",
                "last_attempt_address": f"192.0.2.{rng.randint(1, 254)}",
            }
            system |= {"registered_at": rotated}
            if roll < 0.65:
                confirmed = min(rotated + dt.timedelta(minutes=rng.randint(2, 12)), now)
                fields["confirmed_at"] = confirmed
                last_heartbeat = now - dt.timedelta(minutes=rng.randint(0, 15))
                system |= {"secret_confirmed_at": confirmed, "last_heartbeat_at": last_heartbeat}
                activity = _activity_days(mapping.system_id, confirmed, last_heartbeat, now, rng)
                if 0.62 <= roll < 0.65:
                    # Restored from a backup taken before its cutover: it knocks again.
                    knocked = now - dt.timedelta(minutes=rng.randint(5, 600))
                    fields |= {
                        "knocked_at": knocked,
                        "last_attempt_at": knocked,
                        "last_attempt_outcome": "409",
                    }
                if roll < 0.55:
                    fingerprint_at = min(confirmed + dt.timedelta(hours=6), now)
                    migrated_at = rotated
                    if roll < 0.2:
                        fields["released_at"] = min(confirmed + dt.timedelta(days=1), now)
        LegacyMapping.objects.filter(pk=mapping.pk).update(**fields)
        System.objects.filter(pk=mapping.system_id).update(**system)
        if fingerprint_at is not None:
            # The fingerprint comes the way a real one does: an inventory carrying
            # facts.migration, through the ingest, whose receiver stamps the mapping.
            self._inventory(
                mapping.system_id,
                at=fingerprint_at,
                from_legacy_system_id=mapping.legacy_system_id,
                migrated_at=migrated_at,
            )
        return activity

    def _inventory(
        self,
        system_id: int,
        *,
        at: dt.datetime,
        from_legacy_system_id: str,
        migrated_at: dt.datetime | None = None,
    ) -> Inventory:
        """Ingest an inventory for a system, then date it (and what it stamped) ``at``."""
        system = System.objects.get(pk=system_id)
        payload = ns8_inventory(
            seed=system_id,
            modules=INVENTORY_MODULES,
            from_legacy_system_id=from_legacy_system_id,
            migrated_at=migrated_at.isoformat() if migrated_at else None,
        )
        # The ingest copies the cluster's name onto the system: keep the demo name.
        payload["facts"]["cluster"]["ui_name"] = system.name
        inventory = fleet.inventory_ingest(
            system=system, payload=payload, size=len(json.dumps(payload))
        )
        Inventory.objects.filter(pk=inventory.pk).update(received_at=at)
        System.objects.filter(pk=system_id).update(last_inventory_at=at)
        LegacyMapping.objects.filter(system_id=system_id, fingerprint_at__isnull=False).update(
            fingerprint_at=at
        )
        return inventory

    def _anomalies(self, now: dt.datetime) -> None:
        """Two confirmed systems, not fingerprinted, whose inventories claim a legacy id
        that is not theirs: the ingest records the anomalies."""
        systems = list(
            System.objects.filter(
                legacy_mapping__legacy_system_id__startswith=PREFIX,
                legacy_mapping__confirmed_at__isnull=False,
                legacy_mapping__fingerprint_at__isnull=True,
            )
            .exclude(legacy_mapping__legacy_system_id__in=[claimed for claimed, _ in ANOMALIES])
            .order_by("pk")[: len(ANOMALIES)]
        )
        for system, (claimed, _kind) in zip(systems, ANOMALIES, strict=False):
            seen = now - dt.timedelta(hours=2)
            self._inventory(system.pk, at=seen, from_legacy_system_id=claimed)
            FingerprintAnomaly.objects.filter(
                system=system, claimed_legacy_system_id=claimed
            ).update(first_seen_at=now - dt.timedelta(hours=30), last_seen_at=seen, occurrences=5)

    def _refresh(self, now: dt.datetime) -> int:
        """Heartbeats of the confirmed systems to the last quarter of an hour, with the
        activity days of the time the demo was left alone."""
        rng = random.Random(8)  # noqa: S311 - demo data
        systems = list(
            System.objects.filter(
                legacy_mapping__legacy_system_id__startswith=PREFIX,
                secret_confirmed_at__isnull=False,
                suspended_at__isnull=True,
                deleted_at__isnull=True,
            ).order_by("pk")
        )
        activity = []
        for system in systems:
            since = system.last_heartbeat_at or system.secret_confirmed_at or now
            system.last_heartbeat_at = now - dt.timedelta(minutes=rng.randint(0, 15))
            activity += _activity_days(system.pk, since, system.last_heartbeat_at, now, rng)
        System.objects.bulk_update(systems, ["last_heartbeat_at"], batch_size=100)
        SystemActivityDay.objects.bulk_create(activity, ignore_conflicts=True, batch_size=1000)
        return len(systems)


def _activity_days(
    system_id: int, since: dt.datetime, last: dt.datetime, now: dt.datetime, rng: random.Random
) -> list[SystemActivityDay]:
    """A day row for each day from ``since`` to ``last`` within the chart, a few missed;
    the day of the last heartbeat always has its row."""
    day = max(since.date(), now.date() - dt.timedelta(days=ACTIVITY_DAYS - 1))
    rows = []
    while day <= last.date():
        if day == last.date() or rng.random() >= 0.03:
            rows.append(SystemActivityDay(system_id=system_id, day=day))
        day += dt.timedelta(days=1)
    return rows
