"""Read queries on cluster backups shared by the admin, the dashboard, metrics and the
staff API."""

import datetime as dt
from collections.abc import Collection

from django.conf import settings
from django.db.models import (
    BigIntegerField,
    Count,
    DateTimeField,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from fleet_app import access
from fleet_app import selectors as fleet
from fleet_app.models import Quota, System, User

from .models import ClusterBackup


def cluster_backups_visible_to(user: User) -> QuerySet[ClusterBackup]:
    """Backups of the systems in the user's organization subtree (as the fleet scopes)."""
    return access.scope_queryset(user, ClusterBackup.objects.all())


def _latest_backup_at() -> Subquery:
    # One index probe per system on bkp_cluster_sys_time_idx.
    return Subquery(
        ClusterBackup.objects.filter(system_id=OuterRef("pk"))
        .order_by("-uploaded_at")
        .values("uploaded_at")[:1],
        output_field=DateTimeField(),
    )


def _quota_column(column: str) -> Subquery:
    return Subquery(
        Quota.objects.filter(
            organization_id=OuterRef("organization_id"), resource=Quota.Resource.BACKUP_BYTES
        ).values(column)[:1]
    )


def systems_with_backup_usage(systems: QuerySet[System]) -> QuerySet[System]:
    """Systems annotated with their backups (count, bytes, latest) and their
    organization's backup quota (stored usage, effective limit)."""
    default_limit = settings.FLEET_QUOTA_DEFAULTS[Quota.Resource.BACKUP_BYTES]
    return systems.annotate(
        backup_count=Count("cluster_backups"),
        backup_bytes=Coalesce(Sum("cluster_backups__size"), Value(0)),
        last_backup_at=Max("cluster_backups__uploaded_at"),
        quota_used=Coalesce(_quota_column("usage"), Value(0), output_field=BigIntegerField()),
        quota_limit=Coalesce(
            _quota_column("limit"), Value(default_limit), output_field=BigIntegerField()
        ),
    )


def stale_cutoff(days: int | None = None) -> dt.datetime:
    days = settings.CLUSTER_BACKUP_STALE_DAYS if days is None else days
    return timezone.now() - dt.timedelta(days=days)


def backup_freshness_counts(systems: QuerySet[System], *, days: int | None = None) -> dict:
    """How many live systems have a fresh backup, a stale one, none (total = fresh + stale
    + never; ``never_registered`` is the part of ``never`` that could have sent one);
    bytes; corrupt backups."""
    cutoff = stale_cutoff(days)
    counts = (
        systems.not_deleted()
        .annotate(last_backup=_latest_backup_at())
        .aggregate(
            total=Count("pk"),
            fresh=Count("pk", filter=Q(last_backup__gte=cutoff)),
            stale=Count("pk", filter=Q(last_backup__lt=cutoff)),
            never=Count("pk", filter=Q(last_backup__isnull=True)),
            never_registered=Count(
                "pk", filter=Q(last_backup__isnull=True, registered_at__isnull=False)
            ),
        )
    )
    stored = ClusterBackup.objects.filter(system__in=systems.values("pk")).aggregate(
        bytes=Coalesce(Sum("size"), Value(0)),
        corrupt=Count("pk", filter=Q(corrupt_at__isnull=False)),
    )
    return {**counts, **stored}


def systems_backup_stale(
    systems: QuerySet[System], *, days: int | None = None, limit: int = 50
) -> list[System]:
    """Live systems whose latest backup is older than the cutoff, stalest first."""
    return list(
        systems.not_deleted()
        .annotate(last_backup=_latest_backup_at())
        .filter(last_backup__lt=stale_cutoff(days))
        .select_related("organization")
        .order_by("last_backup")[:limit]
    )


def systems_never_backed_up(systems: QuerySet[System], *, limit: int = 50) -> list[System]:
    return list(
        systems.not_deleted()
        .filter(registered_at__isnull=False)
        .exclude(pk__in=ClusterBackup.objects.values("system_id"))
        .select_related("organization")
        .order_by("-registered_at")[:limit]
    )


def organizations_quota_usage(user: User, *, limit: int = 20) -> list[dict]:
    """Organizations of the user's subtree storing the most backup bytes."""
    default_limit = settings.FLEET_QUOTA_DEFAULTS[Quota.Resource.BACKUP_BYTES]
    rows = (
        Quota.objects.filter(
            resource=Quota.Resource.BACKUP_BYTES,
            organization__in=fleet.organizations_visible_to(user),
            usage__gt=0,
        )
        .select_related("organization")
        .order_by("-usage")[:limit]
    )
    result = []
    for quota in rows:
        effective = quota.limit if quota.limit is not None else default_limit
        result.append(
            {
                "organization": quota.organization,
                "used": quota.usage,
                "limit": effective,
                "percent": min(100, round(100 * quota.usage / effective)) if effective else 100,
            }
        )
    return result


def storage_keys_owned(keys: Collection[str]) -> set[str]:
    """Which of ``keys`` a cluster backup row points at (the storage sweep keeps those)."""
    return set(
        ClusterBackup.objects.filter(storage_key__in=keys).values_list("storage_key", flat=True)
    )
