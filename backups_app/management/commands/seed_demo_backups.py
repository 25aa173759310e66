"""Load idempotent demo cluster backups on top of the demo fleet (``manage.py seed_demo``).

Every demo system that has been heard from gets its story, derived from its name alone:
most sent a backup in the last day or two, some have only stale ones, a few never sent
any. The backups go through the same service as a real upload (stored, hashed, counted
against the quota, pruned by retention); only their times are then moved into the past,
never after the system's last heartbeat: a system silent for a week has no fresh
backup. ``--refresh`` moves the times of an old demo's backups up to now.
"""

import datetime as dt
import random
import zlib

from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone

from fleet_app.management.base import CutoverCommand
from fleet_app.models import Organization, System

from ...cluster_backups.models import ClusterBackup
from ...demo import demo_backup_upload

OWNER = "Cutover Demo Owner"


def _story(system: System) -> list[dt.timedelta]:
    """How long ago each of the system's backups was sent, newest first; [] for never."""
    rng = random.Random(zlib.crc32(f"{system.organization.name}/{system.name}".encode()))  # noqa: S311
    roll = rng.random()
    if roll < 0.12:
        return []
    if roll < 0.30:  # backups stopped a while ago
        latest = dt.timedelta(days=rng.randint(3, 20), hours=rng.randint(0, 23))
    else:  # nightly, the last one within the last day and a half
        latest = dt.timedelta(hours=rng.randint(1, 36), minutes=rng.randint(0, 59))
    return [latest + dt.timedelta(days=n) for n in range(rng.randint(1, 2))]


class Command(CutoverCommand):
    help = "Load demo cluster backups (fresh, stale and missing) on top of the demo fleet."

    def add_arguments(self, parser):
        parser.add_argument(
            "--refresh",
            action="store_true",
            help="Also move the times of existing demo backups up to now, so a demo loaded "
            "days ago has fresh backups again.",
        )

    def handle(self, *args, refresh: bool = False, **options):
        owner = Organization.objects.filter(kind="owner", name=OWNER).first()
        if owner is None:
            raise CommandError("Run manage.py seed_demo first: the demo fleet is missing.")
        now = timezone.now()
        systems = list(
            System.objects.filter(
                organization__path__startswith=owner.path,
                registered_at__isnull=False,
                last_heartbeat_at__isnull=False,
                deleted_at__isnull=True,
            )
            .select_related("organization")
            .order_by("pk")
        )
        have = set(
            ClusterBackup.objects.filter(system__in=systems).values_list("system_id", flat=True)
        )
        created = retimed = 0
        for system in systems:
            ages = _story(system)
            if system.pk not in have:
                for n in range(len(ages)):
                    demo_backup_upload(system, n)
                created += len(ages)
            elif not refresh:
                continue
            retimed += self._retime(system, ages, now)
        self.stdout.write(
            f"Demo backups: {created} created, {retimed} dated, for {len(systems)} systems."
        )

    @transaction.atomic
    def _retime(self, system: System, ages: list[dt.timedelta], now: dt.datetime) -> int:
        """Date the system's backups by its story, newest first, none after its last
        heartbeat (a backup is sent by a live system)."""
        backups = list(ClusterBackup.objects.filter(system=system).order_by("-uploaded_at"))
        last_heard = system.last_heartbeat_at or now
        latest = min(now - (ages[0] if ages else dt.timedelta(hours=1)), last_heard)
        for n, backup in enumerate(backups):
            backup.uploaded_at = latest - dt.timedelta(days=n)
        ClusterBackup.objects.bulk_update(backups, ["uploaded_at"])
        return len(backups)
