"""Staff dashboards (server-rendered, no external assets)."""

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render

from . import selectors
from .models import System


@staff_member_required
def fleet_dashboard(request):
    systems = selectors.systems_visible_to(request.user)
    activity = selectors.fleet_activity_by_day(systems, days=30)
    peak = max((count for _, count in activity), default=0) or 1
    context = {
        "title": "Fleet",
        "counts": selectors.fleet_status_counts(systems),
        "types": selectors.fleet_type_counts(systems),
        "silent": selectors.systems_silent(systems),
        "never_inventoried": selectors.systems_never_inventoried(systems),
        "activity": [
            {"day": day, "count": count, "height": round(100 * count / peak)}
            for day, count in activity
        ],
        "activity_peak": peak,
        "timeout_minutes": System.heartbeat_timeout().total_seconds() // 60,
    }
    return render(request, "fleet_app/dashboard.html", context)
