"""The replication dashboard: every job's health, lag and last transfer; divergences
awaiting a decision; snapshot freshness per dataset. Reads recorded state only."""

from django.contrib import admin
from django.db.models import Sum
from django.shortcuts import render
from django.utils import timezone

from fleet_app.access_http import dashboard

from . import selectors
from .models import DivergenceReport, ReplicationRun

TONES = {selectors.OK: "ok", selectors.WARN: "warn", selectors.CRIT: "crit"}


def _human_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


@dashboard("zfs-dashboard")
def zfs_dashboard(request):
    now = timezone.now()
    jobs = selectors.job_rows(now)
    datasets = selectors.dataset_checks(now)
    for row in jobs:
        row["tone"] = TONES[row["state"]]
        row["bytes_human"] = _human_bytes(row["last_bytes"])
        row["lag_human"] = (
            selectors.age_text(row["lag_seconds"]) if row["lag_seconds"] is not None else "—"
        )
    open_divergences = DivergenceReport.objects.filter(status=DivergenceReport.Status.OPEN)
    divergences = list(open_divergences.select_related("job").order_by("-created_at")[:50])
    # The list is bounded; the tile counts them all.
    divergences_open = len(divergences) if len(divergences) < 50 else open_divergences.count()
    day_ago = now - timezone.timedelta(days=1)
    moved = (
        ReplicationRun.objects.filter(finished_at__gte=day_ago).aggregate(n=Sum("bytes"))["n"] or 0
    )
    pending = "warn" if divergences else ""
    states = [row["state"] for row in jobs]
    tiles = [
        ("jobs", "Jobs", len(jobs), "replication jobs", ""),
        ("ok", "OK", states.count(selectors.OK), "up to date", "ok"),
        ("warn", "Warning", states.count(selectors.WARN), "late or last run failed", "warn"),
        ("crit", "Critical", states.count(selectors.CRIT), "refused, diverged or far behind",
         "crit"),
        ("divergences", "Divergences", divergences_open, "awaiting a staff decision", pending),
        ("moved", "Moved, 24 h", _human_bytes(moved), "bytes sent by finished runs", ""),
    ]  # fmt: skip
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": "ZFS replication",
        "tiles": [
            {"id": f"count-{key}", "label": a, "value": b, "hint": c, "tone": d}
            for key, a, b, c, d in tiles
        ],
        "divergences_open": divergences_open,
        "jobs": jobs,
        "divergences": divergences,
        "datasets": [{"check": c, "tone": TONES[c.state]} for c in datasets],
    }
    return render(request, "backups_app/zfs_dashboard.html", context)
