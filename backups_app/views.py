"""The backup dashboard (server-rendered, no external assets): the freshness of cluster
backups and, for superusers, service backups and drills, so it reads both capabilities."""

from django.conf import settings
from django.contrib import admin
from django.shortcuts import render

from fleet_app import access
from fleet_app import selectors as fleet_selectors
from fleet_app.access_http import dashboard

from .cluster_backups import selectors as cluster_selectors
from .service_backups import selectors as service_selectors


def _tiles(counts: dict, days: int) -> list[dict]:
    specs = [
        ("total", "Systems", "live systems in your scope", ""),
        ("fresh", "Fresh", f"a backup in the last {days} days", "ok"),
        ("stale", "Stale", f"no backup for more than {days} days", "warn"),
        ("never", "Never backed up", "no backup stored", "muted"),
        ("corrupt", "Corrupt", "failed a checksum on read", "warn"),
    ]
    return [
        {"id": f"count-{key}", "label": label, "hint": hint, "tone": tone, "value": counts[key]}
        for key, label, hint, tone in specs
    ]


@dashboard("backup-dashboard")
def backup_dashboard(request):
    """Backup freshness of the user's subtree, quota use, and (for superusers, whose
    Cutover's own services they are) service backups and restore drills."""
    days = settings.CLUSTER_BACKUP_STALE_DAYS
    systems = fleet_selectors.systems_visible_to(request.user)
    counts = cluster_selectors.backup_freshness_counts(systems, days=days)
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": "Backup dashboard",
        "days": days,
        "counts": counts,
        "tiles": _tiles(counts, days),
        "stale": cluster_selectors.systems_backup_stale(systems, days=days),
        "never": cluster_selectors.systems_never_backed_up(systems),
        "never_unregistered": counts["never"] - counts["never_registered"],
        "quotas": cluster_selectors.organizations_quota_usage(request.user),
        "services": (
            service_selectors.services_overview()
            if access.allowed(request.user, "model", "backups_app.service")
            else None
        ),
        "drill_days": settings.BACKUP_DRILL_MAX_AGE_DAYS,
    }
    return render(request, "backups_app/dashboard.html", context)
