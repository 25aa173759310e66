"""Read queries shared by the admin, the dashboards and the staff API."""

import datetime as dt

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from . import access
from .models import (
    AuditEntry,
    Inventory,
    InventoryChange,
    Organization,
    System,
    SystemActivityDay,
    User,
)


def organizations_visible_to(user: User) -> QuerySet[Organization]:
    """The user's organization and everything below it; all of them for the platform."""
    return access.scope_queryset(user, Organization.objects.all())


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
    """Counts by status in one aggregate query (deleted systems excluded)."""
    cutoff = timezone.now() - System.heartbeat_timeout()
    return systems.not_deleted().aggregate(
        total=Count("pk"),
        unknown=Count("pk", filter=Q(last_heartbeat_at__isnull=True)),
        active=Count("pk", filter=Q(last_heartbeat_at__gte=cutoff)),
        inactive=Count("pk", filter=Q(last_heartbeat_at__lt=cutoff)),
        suspended=Count("pk", filter=Q(suspended_at__isnull=False)),
        never_inventoried=Count("pk", filter=Q(last_inventory_at__isnull=True)),
        unregistered=Count("pk", filter=Q(registered_at__isnull=True)),
    )


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
