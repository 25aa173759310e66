"""The cutover dashboard (server-rendered, inline SVG, no external assets), and the
pages that import legacy mappings from an uploaded export: upload, plan, confirm, import.
"""

import datetime as dt
import math

from django import forms
from django.contrib import admin, messages
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timesince

from fleet_app import access
from fleet_app.access_http import dashboard
from fleet_app.charts import nice_step
from fleet_app.errors import FleetError
from fleet_app.models import Organization
from fleet_app.selectors import organizations_visible_to

from . import imports, selectors, services
from .models import LegacyMapping, MappingImportRun

STRAGGLERS_SHOWN = 50
ANOMALIES_SHOWN = 20
RUNS_SHOWN = 5
KNOCKING_SHOWN = 50
REFUSED_SHOWN = 20
ATTEMPT_DAYS = 7
# What each /proxy/credentials outcome means, in the order the dashboard lists them.
OUTCOMES = (
    ("200", "native credentials issued"),
    ("401", "unknown legacy pair"),
    ("403", "released, suspended or deleted"),
    ("409", "already cut over (knocking)"),
    ("429", "throttled"),
    ("400", "malformed"),
)
OUTCOME_TEXT = dict(OUTCOMES)

# Chart geometry in SVG user units; the SVG scales to the width of its container.
CHART_WIDTH = 900
CHART_HEIGHT = 280
CHART_LEFT = 56  # room for the count labels
CHART_RIGHT = 16
CHART_TOP = 14
CHART_BOTTOM = 30  # room for the date labels
CHART_MIN_DAYS = 14
CHART_DATE_LABELS = 7  # about this many date labels, counted back from today


def _compact(value: int) -> str:
    """An axis label: 1500 → 1.5k, 2000000 → 2M."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".removesuffix(".0") + suffix
    return str(value)


def _label(day: dt.date, x: float) -> dict:
    """A date under the axis; the ones at the edges are anchored inwards, not clipped."""
    anchor = "middle"
    if x > CHART_WIDTH - CHART_RIGHT - 20:
        anchor = "end"
    elif x < CHART_LEFT + 20:
        anchor = "start"
    return {"day": day, "x": f"{x:.1f}", "anchor": anchor}


def _burndown_chart(summary: selectors.CutoverSummary) -> dict:
    """Lines, gridlines and labels of the burn-down, in SVG coordinates.

    Remaining (not fingerprinted) is the filled area; not rotated, not confirmed and all
    mappings are lines over it. The projection, when there is one, is a dashed line from
    today's remaining to zero, drawn up to the projected day or to the chart's right edge
    (the axis is extended by at most half its length, so a far projection does not
    squash the history).
    """
    today = summary.now.date()
    series = selectors.burndown_series(summary.points, until=today, min_days=CHART_MIN_DAYS)
    start, last = series[0].day, series[-1].day
    projected_at = summary.projected_completion_at
    projected_day = projected_at.date() if projected_at else None
    end = last
    if projected_day is not None:
        end = max(last, min(projected_day, today + dt.timedelta(days=max(len(series) // 2, 7))))
    span = max((end - start).days, 1)
    peak = max((point.mappings for point in series), default=0)
    step = nice_step(peak / 4)
    top = max(step, math.ceil(peak / step) * step)
    plot_width = CHART_WIDTH - CHART_LEFT - CHART_RIGHT
    plot_height = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    baseline = CHART_TOP + plot_height

    def x(day: dt.date) -> float:
        return CHART_LEFT + plot_width * (day - start).days / span

    def y(value: float) -> float:
        return baseline - plot_height * max(value, 0) / top

    def line(attribute: str) -> str:
        return " ".join(f"{x(p.day):.1f},{y(getattr(p, attribute)):.1f}" for p in series)

    remaining = line("remaining")
    area = f"{x(start):.1f},{baseline:.1f} {remaining} {x(last):.1f},{baseline:.1f}"
    projection = None
    if projected_day is not None and summary.remaining:
        # Linear from (now, remaining) to (projected_at, 0), cut at the axis end.
        total_days = max((projected_day - today).days, 1)
        shown_days = (end - today).days
        value_at_end = summary.remaining * max(0.0, 1 - shown_days / total_days)
        projection = {
            "x1": f"{x(today):.1f}",
            "y1": f"{y(summary.remaining):.1f}",
            "x2": f"{x(end):.1f}",
            "y2": f"{y(value_at_end):.1f}",
            "reaches_zero": value_at_end == 0,
        }
    label_every = dt.timedelta(days=max(1, math.ceil(span / CHART_DATE_LABELS)))
    label_days = []
    day = today
    while day >= start:
        label_days.append(day)
        day -= label_every
    day = today + label_every
    while day <= end - label_every / 2:
        label_days.append(day)
        day += label_every
    if projection and projection["reaches_zero"]:
        label_days = [day for day in label_days if abs((day - end).days) >= label_every.days / 2]
    labels = [_label(day, x(day)) for day in sorted(label_days)]
    if projection and projection["reaches_zero"]:
        labels.append({**_label(end, x(end)), "projected": True})
    gridlines = [
        {"value": _compact(value), "y": f"{y(value):.1f}"} for value in range(0, top + 1, step)
    ]
    now_point = next(p for p in series if p.day == today)
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": CHART_LEFT,
        "right": CHART_WIDTH - CHART_RIGHT,
        "baseline": baseline,
        "label_y": baseline + 18,
        "gridlines": gridlines,
        "labels": labels,
        "area": area,
        "remaining": remaining,
        "not_confirmed": line("not_confirmed"),
        "not_rotated": line("not_rotated"),
        "mappings": line("mappings"),
        "projection": projection,
        "today_x": f"{x(today):.1f}",
        "today_y": f"{y(now_point.remaining):.1f}",
        "start": start,
        "days": len(series),
    }


def _tiles(summary: selectors.CutoverSummary) -> list[dict]:
    def share(value: int, what: str) -> str:
        if not summary.mappings:
            return what
        return f"{what}: {int(1000 * value / summary.mappings) / 10:g} % of mappings"

    anomalies_tone = "bad" if summary.anomalies_open else "muted"
    specs = [
        ("mappings", "Mappings", summary.mappings, "rows in proxy_mappings", ""),
        ("legacy", "Still legacy", summary.legacy, share(summary.legacy, "not rotated"),
         "warn" if summary.legacy else "ok"),
        ("rotated", "Rotated", summary.rotated, "native credentials issued", ""),
        ("confirmed", "Confirmed", summary.confirmed, "native credentials used", ""),
        ("fingerprinted", "Fingerprinted", summary.fingerprinted,
         share(summary.fingerprinted, "done"), "ok"),
        ("released", "Released", summary.released, "legacy slot freed", "muted"),
        ("anomalies", "Open anomalies", summary.anomalies_open, "fingerprints that do not fit",
         anomalies_tone),
    ]  # fmt: skip
    return [
        {
            "id": "count-" + key,
            "label": label,
            "value": value,
            "display": f"{value:,}",
            "hint": hint,
            "tone": tone,
        }
        for key, label, value, hint, tone in specs
    ]


def _blockers(summary: selectors.CutoverSummary) -> list[dict]:
    blockers = summary.blockers
    specs = [
        ("not_rotated", "not rotated yet (still on legacy credentials)"),
        ("rotated_unconfirmed", "rotated, native credentials never used"),
        ("confirmed_unfingerprinted", "confirmed, no inventory with facts.migration yet"),
        ("anomalies_open", "open fingerprint anomalies to review"),
    ]
    return [
        {"key": key, "count": blockers[key], "display": f"{blockers[key]:,}", "text": text}
        for key, text in specs
        if blockers[key]
    ]


def _ago(stamp: dt.datetime | None) -> str:
    """ "3 weeks ago": one unit is enough in a table cell, the exact stamp is its title."""
    if stamp is None:
        return "never"
    if timezone.now() - stamp < dt.timedelta(minutes=1):
        return "just now"
    return f"{timesince(stamp, depth=1)} ago"


def _with_ages(rows: list, **stamps: str) -> list:
    """Set ``<name>_ago`` on each row for each ``name=attribute``."""
    for row in rows:
        for name, attribute in stamps.items():
            setattr(row, f"{name}_ago", _ago(getattr(row, attribute)))
    return rows


@dashboard("cutover-dashboard")
def cutover_dashboard(request):
    """Where the cutover stands: totals, readiness, burn-down, stragglers, anomalies, runs.

    Ten queries of its own whatever the number of mappings: the access check, the
    CutoverDay rows, the open anomaly count, two straggler lists on their partial
    indexes, the latest anomalies, the latest rotation runs, the mappings knocking after
    cutover and the latest refused calls (both on partial indexes), and the calls of the
    last days by outcome.
    """
    summary = selectors.cutover_summary(with_points=True)
    since = timezone.now().date() - dt.timedelta(days=ATTEMPT_DAYS - 1)
    attempts = selectors.attempts_by_outcome(since=since)
    refused = _with_ages(selectors.refused_latest(REFUSED_SHOWN), attempt="last_attempt_at")
    for mapping in refused:
        mapping.outcome_text = OUTCOME_TEXT.get(mapping.last_attempt_outcome, "")
    context = {
        **admin.site.each_context(request),
        # The dashboard needs the full width; the breadcrumbs lead back to the admin.
        "is_nav_sidebar_enabled": False,
        "title": "Cutover dashboard",
        "summary": summary,
        "tiles": _tiles(summary),
        "blockers": _blockers(summary),
        "remaining_display": f"{summary.remaining:,}",
        "chart": _burndown_chart(summary),
        "not_rotated": _with_ages(
            selectors.stragglers_list("not_rotated", STRAGGLERS_SHOWN),
            created="created_at",
            contact="last_contact_at",
        ),
        "unconfirmed": _with_ages(
            selectors.stragglers_list("unconfirmed", STRAGGLERS_SHOWN),
            rotated="rotated_at",
            contact="last_contact_at",
        ),
        "unconfirmed_total": summary.blockers["rotated_unconfirmed"],
        "anomalies": _with_ages(selectors.anomalies_open(ANOMALIES_SHOWN), seen="last_seen_at"),
        "runs": _with_ages(selectors.rotation_runs_latest(RUNS_SHOWN), created="created_at"),
        "knocking": _with_ages(
            selectors.knocking_list(KNOCKING_SHOWN), knocked="knocked_at", confirmed="confirmed_at"
        ),
        "may_reopen": access.allowed(request.user, "route", "cutover-mapping-reopen", "c"),
        "refused": refused,
        "attempts": [
            {"outcome": code, "text": text, "count": attempts.get(code, 0)}
            for code, text in OUTCOMES
        ],
        "attempt_days": ATTEMPT_DAYS,
        "window_days": selectors.PROJECTION_WINDOW_DAYS,
    }
    return render(request, "migrations_app/cutover_dashboard.html", context)


@dashboard("cutover-mapping-reopen", kind="route")
def mapping_reopen(request, pk: int):
    """POST from the dashboard's lists: re-open one mapping (confirmed: its legacy pair may
    rotate again; unconfirmed: its pending secrets authenticate again) and come back."""
    if request.method != "POST":
        response = HttpResponseRedirect(reverse("cutover-dashboard"))
        response.status_code = 405
        response["Allow"] = "POST"
        return response
    visible = access.scope_queryset(request.user, LegacyMapping.objects.all())
    mapping = visible.filter(pk=pk).first()
    if mapping is None:
        raise Http404("No mapping with this id is visible to you.")
    if mapping.rotated_at is None:
        messages.warning(
            request, f"{mapping.legacy_system_id} was never rotated: nothing to re-open."
        )
    else:
        confirmed = mapping.confirmed_at is not None
        services.mapping_reopen(actor=request.user, mapping=mapping)
        done = (
            "its legacy pair may rotate again"
            if confirmed
            else "the secrets pending for it authenticate again"
        )
        messages.success(request, f"{mapping.legacy_system_id} re-opened: {done}.")
    return HttpResponseRedirect(reverse("cutover-dashboard") + "#knocking")


# --- Importing mappings from a page ----------------------------------------------------------

IMPORTS_SHOWN = 20


class MappingUploadForm(forms.Form):
    file = forms.FileField(
        label="Mappings export",
        help_text="CSV with a header (legacy_system_id, legacy_token, and optionally name, "
        'organization, type, legacy_last_seen_at), a JSON list (or {"proxy_mappings": '
        "[…]}), or JSON Lines.",
    )
    organization: forms.ModelChoiceField = forms.ModelChoiceField(
        queryset=Organization.objects.none(),
        required=False,
        help_text="For rows without an organization column.",
    )
    born_registered = forms.BooleanField(
        required=False,
        label="Create the systems already registered",
        help_text="The rotation hands out their secret; otherwise they register on first rotation.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["organization"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = organizations_visible_to(user).order_by("path")


@dashboard("mappings-import", write="r")
def mappings_import_page(request):
    """Upload an export; its plan (a dry run) starts at once and its page follows it."""
    form = MappingUploadForm(request.POST or None, request.FILES or None, user=request.user)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                run = imports.mapping_import_upload(
                    actor=request.user,
                    upload=form.cleaned_data["file"],
                    organization=form.cleaned_data["organization"],
                    born_registered=form.cleaned_data["born_registered"],
                )
            except FleetError as error:
                form.add_error("file", error.message)
            else:
                return redirect("mappings-import-run", run_id=run.pk)
        status = 400
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": "Import mappings",
        "form": form,
        "runs": list(selectors.mapping_imports_visible_to(request.user)[:IMPORTS_SHOWN]),
    }
    return render(request, "migrations_app/mappings_import.html", context, status=status)


@dashboard("mappings-import-run", kind="route", write="r")
def mappings_import_run_page(request, run_id: int):
    """One import: its progress, its plan (what it would create and refuse) and, for a
    finished plan, the confirmation that imports it or the discard that drops it."""
    run = get_object_or_404(selectors.mapping_imports_visible_to(request.user), pk=run_id)
    error, status = "", 200
    if request.method == "POST":
        try:
            if request.POST.get("do") == "apply":
                applied = imports.mapping_import_apply_start(actor=request.user, plan=run)
                return redirect("mappings-import-run", run_id=applied.pk)
            if request.POST.get("do") == "discard":
                imports.mapping_import_discard(actor=request.user, plan=run)
                messages.success(request, f"The upload of {run.file_name} was discarded.")
                return redirect("mappings-import")
            error, status = "Choose to import or to discard.", 400
        except FleetError as failure:
            error, status = failure.message, failure.status
        run.refresh_from_db()
    report = run.report or {}
    applied_run = run.applies.exclude(state="failed").first() if run.mode == "plan" else None
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": f"Import {run.pk}: {run.file_name}",
        "run": run,
        "read_bytes": imports.mapping_import_progress(run),
        "report": report,
        "examples_more": max(0, report.get("created", 0) - len(report.get("examples", []))),
        "applied_run": applied_run,
        "can_apply": (
            run.mode == MappingImportRun.Mode.PLAN
            and run.state == "succeeded"
            and bool(run.stored_name)
            and applied_run is None
            and access.allowed(request.user, "dashboard", "mappings-import", "r")
        ),
        "error": error,
    }
    return render(request, "migrations_app/mappings_import_run.html", context, status=status)
