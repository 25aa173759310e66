"""Read queries shared by the admin, the dashboards and the staff API."""

import datetime as dt

from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from . import access, pending_secrets
from .errors import InvalidInput
from .models import (
    AuditEntry,
    Inventory,
    InventoryChange,
    InventoryInbox,
    Organization,
    System,
    SystemActivityDay,
    User,
)


def organizations_visible_to(user: User) -> QuerySet[Organization]:
    """The user's organization and everything below it; all of them for the platform."""
    return access.scope_queryset(user, Organization.objects.all())


# The largest value of a bigint primary key: a longer number cannot be an id.
_PK_MAX = 2**63 - 1


def organization_resolve(reference: str, *, within: QuerySet[Organization]) -> Organization:
    """The organization an operator means by ``reference``: an id, a slug, or a name only
    when exactly one organization within ``within`` has it.

    ``within`` is what the caller may reach; nothing outside it is found or named.
    Raises ``InvalidInput`` with one sentence for an unknown or ambiguous reference.
    """
    reference = reference.strip()
    if not reference:
        raise InvalidInput("The organization is empty; give its id, slug or name.")
    if reference.isascii() and reference.isdigit() and int(reference) <= _PK_MAX:
        found = within.filter(pk=int(reference)).first()
        if found is not None:
            return found
    found = within.filter(slug=reference).first()
    if found is not None:
        return found
    named = list(within.filter(name=reference).order_by("pk"))
    if len(named) == 1:
        return named[0]
    if named:
        candidates = ", ".join(f"{o.slug} (id {o.pk})" for o in named)
        raise InvalidInput(
            f"{len(named)} organizations are named {reference!r}: {candidates}; "
            "give the slug or the id."
        )
    raise InvalidInput(f"No organization has the id, slug or name {reference!r}.")


def _scoped(queryset: QuerySet, user: User, field: str = "organization") -> QuerySet:
    """Rows whose organization (through ``field``) is in the user's subtree; all of them
    for the platform's personas; none for anybody without a role."""
    who = access.persona(user)
    if who in access.PLATFORM_PERSONAS:
        return queryset
    if who is None:
        return queryset.none()
    # One indexed prefix match on the materialized path.
    return queryset.filter(**{f"{field}__path__startswith": user.organization.path})


def systems_visible_to(user: User) -> QuerySet[System]:
    return _scoped(System.objects.all(), user)


def inventories_visible_to(user: User) -> QuerySet[Inventory]:
    return _scoped(Inventory.objects.all(), user, "system__organization")


def changes_visible_to(user: User) -> QuerySet[InventoryChange]:
    return _scoped(InventoryChange.objects.all(), user, "system__organization")


def audit_entries_visible_to(user: User) -> QuerySet[AuditEntry]:
    return _scoped(AuditEntry.objects.all(), user)


def users_visible_to(user: User) -> QuerySet[User]:
    return _scoped(User.objects.all(), user)


def fleet_status_counts(systems: QuerySet[System]) -> dict[str, int]:
    """Counts by status in one aggregate query (deleted systems excluded).

    Two partitions of ``total``: active + inactive + unknown (the heartbeat), and
    registered + unregistered (the secret used or not).
    """
    cutoff = timezone.now() - System.heartbeat_timeout()
    return systems.not_deleted().aggregate(
        total=Count("pk"),
        unknown=Count("pk", filter=Q(last_heartbeat_at__isnull=True)),
        active=Count("pk", filter=Q(last_heartbeat_at__gte=cutoff)),
        inactive=Count("pk", filter=Q(last_heartbeat_at__lt=cutoff)),
        suspended=Count("pk", filter=Q(suspended_at__isnull=False)),
        never_inventoried=Count("pk", filter=Q(last_inventory_at__isnull=True)),
        registered=Count("pk", filter=Q(registered_at__isnull=False)),
        unregistered=Count("pk", filter=Q(registered_at__isnull=True)),
    )


def inventory_inbox_status(systems: QuerySet[System] | None = None) -> dict:
    """The inventory inbox in one aggregate: rows waiting (``depth``), the oldest waiting
    one's arrival (``oldest_at``, None when empty) and its age in seconds, rows failed.
    ``systems``: only those systems' rows (a tenant's dashboard); all of them without."""
    rows = InventoryInbox.objects.all()
    if systems is not None:
        rows = rows.filter(system__in=systems)
    status = rows.aggregate(
        depth=Count("pk", filter=Q(failed_at__isnull=True)),
        oldest_at=Min("received_at", filter=Q(failed_at__isnull=True)),
        failed=Count("pk", filter=Q(failed_at__isnull=False)),
    )
    oldest = status["oldest_at"]
    status["age_seconds"] = (
        max(0.0, (timezone.now() - oldest).total_seconds()) if oldest is not None else 0.0
    )
    return status


def fleet_type_counts(systems: QuerySet[System]) -> list[dict]:
    return list(
        systems.not_deleted().values("type").annotate(count=Count("pk")).order_by("-count", "type")
    )


def systems_silent(systems: QuerySet[System], limit: int = 50) -> list[System]:
    """Systems whose last heartbeat is older than the timeout, longest silent first."""
    cutoff = timezone.now() - System.heartbeat_timeout()
    return list(
        systems.not_deleted()
        .filter(last_heartbeat_at__lt=cutoff)
        .select_related("organization")
        .order_by("last_heartbeat_at")[:limit]
    )


def systems_never_inventoried(systems: QuerySet[System], limit: int = 50) -> list[System]:
    return list(
        systems.not_deleted()
        .filter(last_inventory_at__isnull=True)
        .select_related("organization")
        .order_by("-created_at")[:limit]
    )


def fleet_activity_by_day(systems: QuerySet[System], days: int = 30) -> list[tuple[dt.date, int]]:
    """Systems seen per UTC day over the last ``days`` days, zero-filled, oldest first."""
    today = timezone.now().date()
    start = today - dt.timedelta(days=days - 1)
    rows = (
        SystemActivityDay.objects.filter(
            day__gte=start, system__in=systems.not_deleted().values("pk")
        )
        .values("day")
        .annotate(count=Count("pk"))
    )
    seen = {row["day"]: row["count"] for row in rows}
    return [
        (start + dt.timedelta(days=i), seen.get(start + dt.timedelta(days=i), 0))
        for i in range(days)
    ]


def pending_secrets_count(system: System) -> int:
    """Secrets issued to ``system`` by rotations that still authenticate, until it uses
    one of them (none once it has)."""
    return pending_secrets.count(system)
