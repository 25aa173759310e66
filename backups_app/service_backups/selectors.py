"""Read queries on service backups shared by the services, the admin, the dashboard,
metrics and the staff API."""

import datetime as dt
from collections.abc import Collection

from django.conf import settings
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from .models import BackupRun, RestoreRun, Service


def latest_good_backup(service: Service) -> BackupRun | None:
    return (
        BackupRun.objects.filter(service=service, state="succeeded", pruned_at__isnull=True)
        .order_by("-pk")
        .first()
    )


def backups_restorable():
    """Backups whose archive is there to restore, the latest first."""
    return (
        BackupRun.objects.filter(state="succeeded", pruned_at__isnull=True)
        .exclude(storage_key="")
        .select_related("service")
        .order_by("-pk")
    )


def restores_latest(limit: int = 20) -> list[RestoreRun]:
    """The latest restores and their plans (drills are on the backup dashboard)."""
    return list(
        RestoreRun.objects.filter(purpose=RestoreRun.Purpose.RESTORE)
        .select_related("service", "created_by")
        .defer("log", "plan", "verify")
        .order_by("-pk")[:limit]
    )


def services_overview(*, drill_max_age_days: int | None = None) -> list[dict]:
    """Each service with its latest backup, latest drill, latest good drill and the
    overdue flag (no good drill within the threshold)."""
    days = settings.BACKUP_DRILL_MAX_AGE_DAYS if drill_max_age_days is None else drill_max_age_days
    cutoff = timezone.now() - dt.timedelta(days=days)
    good_drill = RestoreRun.objects.filter(
        service_id=OuterRef("pk"), purpose=RestoreRun.Purpose.DRILL, verified=True
    ).order_by("-finished_at")
    latest_backup = BackupRun.objects.filter(service_id=OuterRef("pk")).order_by("-pk")
    latest_drill = RestoreRun.objects.filter(
        service_id=OuterRef("pk"), purpose=RestoreRun.Purpose.DRILL
    ).order_by("-pk")
    services = list(
        Service.objects.annotate(
            last_good_drill_at=Subquery(good_drill.values("finished_at")[:1]),
            last_backup_id=Subquery(latest_backup.values("pk")[:1]),
            last_drill_id=Subquery(latest_drill.values("pk")[:1]),
        ).order_by("name")
    )
    # Three queries however many services: the latest rows are fetched together.
    backups = BackupRun.objects.in_bulk([s.last_backup_id for s in services if s.last_backup_id])
    drills = RestoreRun.objects.in_bulk([s.last_drill_id for s in services if s.last_drill_id])
    result = []
    for service in services:
        result.append(
            {
                "service": service,
                "last_backup": backups.get(service.last_backup_id),
                "last_drill": drills.get(service.last_drill_id),
                "last_good_drill_at": service.last_good_drill_at,
                "drill_overdue": service.enabled
                and (service.last_good_drill_at is None or service.last_good_drill_at < cutoff),
            }
        )
    return result


def storage_keys_owned(keys: Collection[str]) -> set[str]:
    """Which of ``keys`` a backup run's live archive is (the storage sweep keeps those).

    A pruned run's archive was meant to be gone: if it is still there, its delete failed.
    """
    return set(
        BackupRun.objects.filter(storage_key__in=keys, pruned_at__isnull=True).values_list(
            "storage_key", flat=True
        )
    )
