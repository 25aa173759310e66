"""Real usage of each quota resource, counted by the app that owns the resource.

The quota jobs (``manage.py quotas``) compare the usage stored on ``Quota`` rows with the
real usage. Systems are fleet_app's own; another app registers how its resource is
counted (backups_app: backup bytes) from its ``AppConfig.ready``, so fleet_app never
imports it.
"""

from collections.abc import Callable

from django.db.models import Count

from .models import Quota, System

UsageSource = Callable[[], dict[int, int]]


def _systems_per_organization() -> dict[int, int]:
    return dict(
        System.objects.not_deleted()
        .order_by()
        .values_list("organization_id")
        .annotate(n=Count("pk"))
        .values_list("organization_id", "n")
    )


def _systems_per_user() -> dict[int, int]:
    return dict(
        System.objects.not_deleted()
        .filter(created_by_id__isnull=False)
        .order_by()
        .values_list("created_by_id")
        .annotate(n=Count("pk"))
        .values_list("created_by_id", "n")
    )


# resource → holder kind → the real usage of every holder that has any, in one query. A
# resource (or holder kind) no service reports is absent: its stored usage cannot be
# checked, so the quota jobs leave it as imported and list it as unverified; counting it
# as zero would erase it.
USAGE_SOURCES: dict[str, dict[str, UsageSource]] = {
    Quota.Resource.SYSTEMS: {
        "organization": _systems_per_organization,
        "user": _systems_per_user,
    },
}


def usage_source_register(resource: str, scope: str, source: UsageSource) -> None:
    """Let the app that owns a resource say how its real usage is counted."""
    if scope not in ("organization", "user"):
        raise ValueError("scope is 'organization' or 'user'")
    USAGE_SOURCES.setdefault(resource, {})[scope] = source
