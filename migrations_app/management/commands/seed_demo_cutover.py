"""Load an idempotent demo cutover on top of the demo fleet (``manage.py seed_demo``).

Imports legacy mappings for the demo customers and spreads them over the last three
weeks of a cutover in progress: most fingerprinted (some of those released), some
confirmed, some rotated and never used, the rest still on legacy credentials, plus two
fingerprint anomalies; then rebuilds the day counters from those stamps, so the cutover
dashboard has a burn-down and a projection to show.
"""

import datetime as dt
import random
import secrets

from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone

from fleet_app.management.base import CutoverCommand
from fleet_app.models import Organization, System

from ...cutover import services
from ...models import FingerprintAnomaly, LegacyMapping, ProxyAttemptDay

PREFIX = "demo-legacy-"
MAPPINGS = 240
DAYS = 21


class Command(CutoverCommand):
    help = "Load a demo cutover (legacy mappings in every state) on top of the demo fleet."

    def handle(self, *args, **options):
        owner = Organization.objects.filter(kind="owner", name="Cutover Demo Owner").first()
        if owner is None:
            raise CommandError("Run manage.py seed_demo first: the demo fleet is missing.")
        if LegacyMapping.objects.filter(legacy_system_id__startswith=PREFIX).exists():
            self.stdout.write("Demo cutover: already loaded.")
            return
        customers = list(
            Organization.objects.filter(kind="customer", path__startswith=owner.path).order_by(
                "name"
            )
        )
        rng = random.Random(8)  # noqa: S311 - demo data, the same every time
        now = timezone.now()
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
                            "organization": str(customers[n % len(customers)].pk),
                        },
                    )
                    for n in range(1, MAPPINGS + 1)
                ),
                apply=True,
            )
            if report.errors:
                raise CommandError(f"Demo import failed: {report.errors[0][1]}")
            for mapping in LegacyMapping.objects.filter(legacy_system_id__startswith=PREFIX):
                self._story(mapping, rng, now)
            anomalous = list(
                System.objects.filter(legacy_mapping__legacy_system_id__startswith=PREFIX)[:2]
            )
            for system, (kind, claimed) in zip(
                anomalous,
                [("unknown", "ghost-7f3a"), ("mismatch", f"{PREFIX}0007")],
                strict=False,
            ):
                FingerprintAnomaly.objects.create(
                    system=system, kind=kind, claimed_legacy_system_id=claimed,
                    expected_legacy_system_id=system.legacy_mapping.legacy_system_id,
                    first_seen_at=now - dt.timedelta(hours=30), last_seen_at=now,
                    occurrences=5,
                )  # fmt: skip
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

    def _story(self, mapping: LegacyMapping, rng: random.Random, now: dt.datetime) -> None:
        """Backdate one mapping and its system along the path it has come so far."""
        created = now - dt.timedelta(days=DAYS, hours=rng.randint(0, 12))
        roll = rng.random()
        fields: dict = {"created_at": created, "legacy_last_seen_at": now - dt.timedelta(
            minutes=rng.randint(5, 60 * 24 * 3))}  # fmt: skip
        system: dict = {}
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
                system |= {
                    "secret_confirmed_at": confirmed,
                    "last_heartbeat_at": now - dt.timedelta(minutes=rng.randint(0, 15)),
                }
                if 0.62 <= roll < 0.65:
                    # Restored from a backup taken before its cutover: it knocks again.
                    knocked = now - dt.timedelta(minutes=rng.randint(5, 600))
                    fields |= {
                        "knocked_at": knocked,
                        "last_attempt_at": knocked,
                        "last_attempt_outcome": "409",
                    }
                if roll < 0.55:
                    fields["fingerprint_at"] = min(confirmed + dt.timedelta(hours=6), now)
                    fields["migrated_at"] = rotated
                    if roll < 0.2:
                        fields["released_at"] = min(confirmed + dt.timedelta(days=1), now)
        LegacyMapping.objects.filter(pk=mapping.pk).update(**fields)
        if system:
            System.objects.filter(pk=mapping.system_id).update(**system)
