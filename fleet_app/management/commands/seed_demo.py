"""Load the demo fleet: an organization tree, ~300 systems, inventories and 30 days of
activity, plus a staff superuser. Idempotent: organizations are keyed on their names,
systems on their names within their organization, the staff account on its e-mail, so
a second run creates nothing and changes nothing.

Systems go through the same services as real ones (``system_create`` then
``system_register``, ``inventory_ingest``); only their timestamps are then moved into
the past so the dashboard has alive, silent and never-seen systems to show.
"""

import datetime as dt
import json
import random
import secrets
import time
import zlib
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from fleet_app import services, signals
from fleet_app.demo import ns8_inventory
from fleet_app.management.base import CutoverCommand
from fleet_app.models import Inventory, Organization, System, SystemActivityDay, User
from fleet_app.progress import ProgressBar

OWNER = "Cutover Demo Owner"
DISTRIBUTORS = ("Northwind Distribution", "Southgate Distribution")
# (name, parent)
RESELLERS = (
    ("Alpine IT Services", "Northwind Distribution"),
    ("Harbor Systems", "Northwind Distribution"),
    ("Lakeside Networks", "Southgate Distribution"),
)
# (name, parent, number of systems): most customers are served by a reseller, one by a
# distributor directly and one by the owner directly, as the commercial tree allows.
CUSTOMERS = (
    ("Acme Manufacturing", "Alpine IT Services", 60),
    ("Bellini Foods", "Alpine IT Services", 30),
    ("Castello Legal", "Harbor Systems", 25),
    ("Delta Clinics", "Harbor Systems", 45),
    ("Evergreen Schools", "Lakeside Networks", 55),
    ("Fjord Logistics", "Lakeside Networks", 35),
    ("Granite Hotels", "Southgate Distribution", 30),
    ("Helios Energy", OWNER, 20),
)
STAFF_EMAIL = "admin@cutover.local"
ACTIVITY_DAYS = 30
# A network incident this many days ago: a quarter of the fleet missed the whole day.
INCIDENT_DAYS_AGO = 12
# Enough to look like a cluster, small enough to load 300 of them in seconds.
INVENTORY_MODULES = 8
# Distinct from the timestamp of any real run, so PostgreSQL can serialize two seeders.
ADVISORY_LOCK_ID = 0x5EED_DE30


@dataclass(frozen=True)
class Fate:
    """What a demo system has been doing, relative to now; derived from its name alone."""

    type: str
    inventory_seed: int
    registered: bool
    heard_from: bool
    inventoried: bool
    suspended: bool
    joined_ago: dt.timedelta
    last_heartbeat_ago: dt.timedelta | None
    miss_rate: float


def _fate(organization_name: str, index: int) -> tuple[str, Fate]:
    """The name and the deterministic story of the ``index``-th system of a customer."""
    slug = organization_name.split()[0].lower()
    is_firewall = index % 6 == 5
    name = f"{slug}-{'nsec' if is_firewall else 'ns8'}-{index + 1:03d}"
    seed = zlib.crc32(f"{organization_name}/{name}".encode())
    rng = random.Random(seed)  # noqa: S311 - a reproducible story, not a secret
    roll = rng.random()
    registered = roll >= 0.04
    heard_from = roll >= 0.08
    silent = heard_from and roll < 0.22
    if not heard_from:
        last_ago = None
    elif silent:
        # Half of them gone quiet for hours (a reboot, a link down), half for days.
        if rng.random() < 0.5:
            last_ago = dt.timedelta(minutes=rng.randint(45, 36 * 60))
        else:
            last_ago = dt.timedelta(days=rng.randint(2, 20), minutes=rng.randint(0, 1439))
    else:
        # Clients call every ten minutes.
        last_ago = dt.timedelta(seconds=rng.randint(5, 9 * 60))
    # Most of the fleet predates the chart; the rest joined during the month.
    if rng.random() < 0.6:
        joined_ago = dt.timedelta(days=rng.randint(ACTIVITY_DAYS, 400))
    else:
        joined_ago = dt.timedelta(days=rng.randint(0, ACTIVITY_DAYS - 1), hours=rng.randint(1, 20))
    if last_ago is not None and joined_ago < last_ago:
        joined_ago = last_ago + dt.timedelta(days=rng.randint(1, 10))
    return name, Fate(
        type="nethsecurity" if is_firewall else "nethserver",
        inventory_seed=seed % 100_000,
        registered=registered,
        heard_from=heard_from,
        inventoried=heard_from and rng.random() >= 0.07,
        suspended=silent and rng.random() < 0.15,
        joined_ago=joined_ago,
        last_heartbeat_ago=last_ago,
        miss_rate=rng.choice((0.0, 0.02, 0.05, 0.15)),
    )


class Command(CutoverCommand):
    help = (
        "Load the demo fleet (organizations, ~300 systems, inventories, 30 days of activity) "
        f"and a staff superuser {STAFF_EMAIL}. Safe to run again: it creates only what is "
        "missing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--refresh",
            action="store_true",
            help="Also move the heartbeats of existing demo systems up to now, so a demo "
            "loaded days ago looks alive again.",
        )

    def handle(self, *args, refresh: bool = False, **options):
        started = time.monotonic()
        self.now = timezone.now()
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # Two seeders at once would both find a system missing and both create it.
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_ID])
            organizations, created_orgs = self._organizations()
            password = self._staff_account(organizations[OWNER])
            created, existing = self._systems(organizations)
            retimed = self._liveness(created + (existing if refresh else []))
            signals.demo_seeded.send(sender=self.__class__)
        elapsed = time.monotonic() - started

        total = sum(count for _, _, count in CUSTOMERS)
        self.stdout.write(
            f"Demo fleet: {len(organizations)} organizations ({created_orgs} created), "
            f"{total} systems ({len(created)} created), {retimed} system timelines written, "
            f"in {elapsed:.1f} s."
        )
        if password is not None:
            self.stdout.write(
                self.style.SUCCESS(f"Staff login: {STAFF_EMAIL} / {password}")
                + "\n  (shown once; it is not stored anywhere in clear)"
            )
        else:
            self.stdout.write(
                f"Staff account {STAFF_EMAIL} already exists; to set a new password run "
                f"`manage.py changepassword {STAFF_EMAIL}`."
            )

    # --- Organizations -----------------------------------------------------------------

    def _organizations(self) -> tuple[dict[str, Organization], int]:
        plan = [(OWNER, Organization.Kind.OWNER, None)]
        plan += [(name, Organization.Kind.DISTRIBUTOR, OWNER) for name in DISTRIBUTORS]
        plan += [(name, Organization.Kind.RESELLER, parent) for name, parent in RESELLERS]
        plan += [(name, Organization.Kind.CUSTOMER, parent) for name, parent, _ in CUSTOMERS]
        names = [name for name, _, _ in plan]
        found = {}
        for organization in Organization.objects.filter(name__in=names).order_by("pk"):
            found.setdefault((organization.name, organization.kind), organization)
        organizations: dict[str, Organization] = {}
        created = 0
        for name, kind, parent in plan:
            organization = found.get((name, kind))
            if organization is None:
                organization = services.organization_create(
                    actor=None,
                    name=name,
                    kind=kind,
                    parent=organizations[parent] if parent else None,
                )
                created += 1
            organizations[name] = organization
        return organizations, created

    # --- Staff account -----------------------------------------------------------------

    def _staff_account(self, owner: Organization) -> str | None:
        """Create the staff superuser; return its password, or None if it already exists."""
        if User.objects.filter(email__iexact=STAFF_EMAIL, is_active=True).exists():
            return None
        password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(
            STAFF_EMAIL, password, full_name="Cutover Admin", organization=owner
        )
        services.audit_record(
            actor=None, action="user.create", obj=user, after=services.audit_snapshot(user)
        )
        return password

    # --- Systems -------------------------------------------------------------------------

    def _systems(
        self, organizations: dict[str, Organization]
    ) -> tuple[list[tuple[System, Fate]], list[tuple[System, Fate]]]:
        """Create the missing systems; return (created, already there), each with its fate."""
        customer_ids = [organizations[name].pk for name, _, _ in CUSTOMERS]
        present = {
            (system.organization_id, system.name): system
            for system in System.objects.filter(organization_id__in=customer_ids)
        }
        plan = [
            (organizations[name], *_fate(name, index))
            for name, _, count in CUSTOMERS
            for index in range(count)
        ]
        missing = [row for row in plan if (row[0].pk, row[1]) not in present]
        existing = [
            (present[(org.pk, name)], fate) for org, name, fate in plan if (org.pk, name) in present
        ]
        created = []
        progress = ProgressBar(self.stdout, len(missing), "systems")
        for done, (organization, name, fate) in enumerate(missing, start=1):
            created.append((self._system(organization, name, fate), fate))
            progress.show(done)
        progress.close()
        return created, existing

    def _system(self, organization: Organization, name: str, fate: Fate) -> System:
        issued = services.system_create(
            actor=None, organization=organization, name=name, type=fate.type
        )
        system = issued.system
        if not fate.registered:
            return system
        system = services.system_register(system_secret=issued.system_secret)
        if fate.inventoried:
            payload = ns8_inventory(seed=fate.inventory_seed, modules=INVENTORY_MODULES)
            payload["installation"] = fate.type
            # The ingest copies the cluster's name onto the system: keep the demo name,
            # which is what makes a second run find it.
            payload["facts"]["cluster"]["ui_name"] = name
            services.inventory_ingest(system=system, payload=payload, size=len(json.dumps(payload)))
        if fate.suspended:
            system = services.system_suspend(actor=None, system=system)
        return system

    # --- Liveness --------------------------------------------------------------------------

    def _liveness(self, systems: list[tuple[System, Fate]]) -> int:
        """Move each system's timestamps to its story and write its activity days."""
        now = self.now
        first_day = now.date() - dt.timedelta(days=ACTIVITY_DAYS - 1)
        incident_day = now.date() - dt.timedelta(days=INCIDENT_DAYS_AGO)
        changed, inventories, activity = [], {}, []
        for system, fate in systems:
            rng = random.Random(fate.inventory_seed)  # noqa: S311 - reproducible
            system.created_at = now - fate.joined_ago
            changed.append(system)
            if not fate.registered:
                continue
            system.registered_at = system.created_at + dt.timedelta(minutes=rng.randint(2, 90))
            if fate.last_heartbeat_ago is None:
                system.last_heartbeat_at = None
            else:
                system.last_heartbeat_at = now - fate.last_heartbeat_ago
                last_day = system.last_heartbeat_at.date()
                day = max(first_day, system.registered_at.date())
                while day <= last_day:
                    miss = 0.25 if day == incident_day else fate.miss_rate
                    if day == last_day or rng.random() >= miss:
                        activity.append(SystemActivityDay(system_id=system.pk, day=day))
                    day += dt.timedelta(days=1)
            if fate.inventoried:
                # Inventories come once a day, at most as recent as the last heartbeat.
                system.last_inventory_at = system.last_heartbeat_at - dt.timedelta(
                    minutes=rng.randint(0, 24 * 60 - 1)
                )
                system.last_inventory_at = max(system.last_inventory_at, system.registered_at)
                inventories[system.pk] = system.last_inventory_at
        System.objects.bulk_update(
            changed,
            ["created_at", "registered_at", "last_heartbeat_at", "last_inventory_at"],
            batch_size=100,
        )
        latest = []
        for inventory in Inventory.objects.filter(system_id__in=inventories).order_by(
            "system_id", "-received_at"
        ):
            if latest and latest[-1].system_id == inventory.system_id:
                continue  # only the newest one is the system's current inventory
            inventory.received_at = inventories[inventory.system_id]
            latest.append(inventory)
        Inventory.objects.bulk_update(latest, ["received_at"], batch_size=100)
        # Rows already there (a refresh, a heartbeat of today) are kept as they are.
        SystemActivityDay.objects.bulk_create(activity, ignore_conflicts=True, batch_size=1000)
        return len(changed)
