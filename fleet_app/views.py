"""Staff dashboards (server-rendered, no external assets)."""

import datetime as dt
import math

from django.contrib import admin
from django.http import Http404
from django.shortcuts import render

from . import selectors
from .access_http import dashboard
from .charts import nice_step
from .models import System

# Chart geometry in SVG user units; the SVG scales to the width of its container.
CHART_DAYS = 30
CHART_WIDTH = 900
CHART_HEIGHT = 260
CHART_LEFT = 48  # room for the count labels
CHART_RIGHT = 12
CHART_TOP = 14
CHART_BOTTOM = 30  # room for the date labels
CHART_DATE_EVERY = 5  # one date label every five bars, counted back from today


def _activity_chart(activity: list[tuple[dt.date, int]]) -> dict:
    """Bars, gridlines and labels for the activity chart, in SVG coordinates."""
    peak = max((count for _, count in activity), default=0)
    step = nice_step(peak / 4)
    top = max(step, math.ceil(peak / step) * step)
    plot_width = CHART_WIDTH - CHART_LEFT - CHART_RIGHT
    plot_height = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    baseline = CHART_TOP + plot_height
    slot = plot_width / max(len(activity), 1)
    bars = []
    for index, (day, count) in enumerate(activity):
        height = plot_height * count / top
        x = CHART_LEFT + index * slot
        labelled = (len(activity) - 1 - index) % CHART_DATE_EVERY == 0
        bars.append(
            {
                "day": day,
                "count": count,
                "x": f"{x + slot * 0.15:.1f}",
                "y": f"{baseline - height:.1f}",
                "width": f"{slot * 0.7:.1f}",
                "height": f"{height:.1f}",
                "center": f"{x + slot / 2:.1f}",
                "labelled": labelled,
            }
        )
    gridlines = [
        {"value": value, "y": f"{baseline - plot_height * value / top:.1f}"}
        for value in range(0, top + 1, step)
    ]
    return {
        "bars": bars,
        "gridlines": gridlines,
        "peak": peak,
        "total": sum(count for _, count in activity),
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": CHART_LEFT,
        "right": CHART_WIDTH - CHART_RIGHT,
        "baseline": baseline,
        "label_y": baseline + 18,
    }


def _tiles(counts: dict[str, int], timeout_minutes: int) -> list[dict]:
    specs = [
        ("total", "Total", "systems, deleted excluded (active + inactive + unknown)", ""),
        ("active", "Active", f"heartbeat in the last {timeout_minutes} min", "ok"),
        ("inactive", "Inactive", f"silent longer than {timeout_minutes} min", "warn"),
        ("unknown", "Unknown", "never sent a heartbeat", "muted"),
        ("suspended", "Suspended", "refused by the collect API", ""),
        ("registered", "Registered", "secret used to register", ""),
        ("unregistered", "Unregistered", "created, secret never used", ""),
        ("never_inventoried", "Never inventoried", "no inventory received yet", ""),
    ]
    return [
        {
            "id": "count-" + key.replace("_", "-"),
            "label": label,
            "hint": hint,
            "tone": tone,
            "value": counts[key],
        }
        for key, label, hint, tone in specs
    ]


def _inbox_tiles(inbox: dict) -> list[dict]:
    age = int(inbox["age_seconds"])
    waited = f"{age // 60} min {age % 60} s" if age >= 60 else f"{age} s"
    return [
        {
            "id": "count-inbox-depth",
            "label": "Inventory inbox",
            "hint": f"waiting to be recorded; the oldest for {waited}"
            if inbox["depth"]
            else "waiting to be recorded: none",
            "tone": "warn" if age > 300 else "",
            "value": inbox["depth"],
            "age_seconds": age,
        },
        {
            "id": "count-inbox-failed",
            "label": "Inbox failed",
            "hint": "inventories that failed while being recorded (see the admin)",
            "tone": "warn" if inbox["failed"] else "",
            "value": inbox["failed"],
        },
    ]


@dashboard("fleet-dashboard")
def fleet_dashboard(request):
    """The fleet at a glance, scoped to the user's organization subtree.

    A fixed number of queries whatever the fleet size: one aggregate for the status
    counts, one GROUP BY for the types, two bounded lists, one GROUP BY for the chart and
    one aggregate for the inventory inbox (depth, age of the oldest row, failed rows).
    """
    systems = selectors.systems_visible_to(request.user)
    counts = selectors.fleet_status_counts(systems)
    types = selectors.fleet_type_counts(systems)
    type_peak = max((row["count"] for row in types), default=0) or 1
    timeout_minutes = int(System.heartbeat_timeout().total_seconds() // 60)
    inbox = selectors.inventory_inbox_status(systems)
    context = {
        **admin.site.each_context(request),
        # The dashboard needs the full width; the breadcrumbs lead back to the admin.
        "is_nav_sidebar_enabled": False,
        "title": "Fleet dashboard",
        "counts": counts,
        "tiles": _tiles(counts, timeout_minutes) + _inbox_tiles(inbox),
        "inbox": inbox,
        "types": [{**row, "percent": round(100 * row["count"] / type_peak)} for row in types],
        "silent": selectors.systems_silent(systems),
        "never_inventoried": selectors.systems_never_inventoried(systems),
        "chart": _activity_chart(selectors.fleet_activity_by_day(systems, days=CHART_DAYS)),
        "chart_days": CHART_DAYS,
        "timeout_minutes": timeout_minutes,
    }
    return render(request, "fleet_app/dashboard.html", context)


@dashboard("system-page", kind="route")
def system_page(request, system_key: str):
    """``/systems/<system_key>``: the page the link a cluster shows (its ``/info``'s
    ``system_url``) opens. A system outside the viewer's subtree is a 404, exactly like a
    key that does not exist."""
    system = (
        selectors.systems_visible_to(request.user)
        .select_related("organization")
        .filter(system_key=system_key[:64])
        .first()
    )
    if system is None:
        raise Http404("No system with this key is visible to you.")
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": f"System {system.name}",
        "system": system,
        "suspended": system.suspended_at is not None,
        "deleted": system.deleted_at is not None,
    }
    return render(request, "fleet_app/system.html", context)
