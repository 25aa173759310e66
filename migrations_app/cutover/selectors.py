"""Read queries of the cutover: totals, burn-down, projection, stragglers, anomalies, runs.

Totals and the burn-down come from the ``CutoverDay`` rows (one per day of the cutover,
a few hundred at most), never from counting ``proxy_mappings``: the dashboard, the staff
API and /metrics cost the same at a thousand mappings and at a million. The lists are
bounded and walk the partial indexes of ``LegacyMapping`` in index order.
"""

import datetime as dt
from dataclasses import dataclass, replace

from django.conf import settings
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from fleet_app import access
from fleet_app.models import PendingSecret

from .models import (
    NOT_REFUSED,
    CutoverDay,
    FingerprintAnomaly,
    LegacyMapping,
    MappingImportRun,
    ProxyAttemptDay,
    RotationRun,
)

# The projection extrapolates the fingerprints of this many days, today included.
PROJECTION_WINDOW_DAYS = 7
STRAGGLER_KINDS = ("not_rotated", "unconfirmed")


# --- Totals, burn-down and projection -------------------------------------------------------


@dataclass(frozen=True)
class BurndownPoint:
    """Cumulative counts at the end of one day."""

    day: dt.date
    mappings: int
    rotated: int
    confirmed: int
    fingerprinted: int
    released: int

    @property
    def not_rotated(self) -> int:
        return self.mappings - self.rotated

    @property
    def not_confirmed(self) -> int:
        return self.mappings - self.confirmed

    @property
    def remaining(self) -> int:
        return self.mappings - self.fingerprinted


@dataclass(frozen=True)
class CutoverSummary:
    """Where the cutover stands, from the per-day counters and the open anomalies.

    The steps nest — a mapping is rotated before it is confirmed, and the inventory that
    fingerprints it is its first native call — so the blockers are differences of the
    totals. A mapping re-opened by staff after it was fingerprinted is the one exception
    (fingerprinted, no longer confirmed): the breakdown never goes below zero, and
    ``remaining`` and ``decommission_ready`` stay exact, since they only compare
    ``fingerprinted`` with ``mappings``.
    """

    now: dt.datetime
    mappings: int
    rotated: int
    confirmed: int
    fingerprinted: int
    released: int
    anomalies_open: int
    fingerprinted_in_window: int
    points: tuple[BurndownPoint, ...] = ()

    @property
    def legacy(self) -> int:
        """Still on legacy credentials: never rotated."""
        return self.mappings - self.rotated

    @property
    def remaining(self) -> int:
        """Not fingerprinted yet: what stands between us and the decommission."""
        return max(self.mappings - self.fingerprinted, 0)

    @property
    def percent_done(self) -> float:
        if not self.mappings:
            return 0.0
        # Floored to a tenth, so 99.97 % reads 99.9, never a premature 100.0.
        return int(1000 * self.fingerprinted / self.mappings) / 10

    @property
    def decommission_ready(self) -> bool:
        """Every mapping fingerprinted (and there is at least one)."""
        return self.mappings > 0 and self.fingerprinted >= self.mappings

    @property
    def blockers(self) -> dict[str, int]:
        return {
            "not_rotated": max(self.mappings - self.rotated, 0),
            "rotated_unconfirmed": max(self.rotated - self.confirmed, 0),
            "confirmed_unfingerprinted": max(self.confirmed - self.fingerprinted, 0),
            "anomalies_open": self.anomalies_open,
        }

    @property
    def rate_per_day(self) -> float:
        return self.fingerprinted_in_window / PROJECTION_WINDOW_DAYS

    @property
    def projected_completion_at(self) -> dt.datetime | None:
        """When the last mapping is fingerprinted at the recent rate; None if unknown."""
        if self.decommission_ready or not self.remaining or self.rate_per_day <= 0:
            return None
        return self.now + dt.timedelta(days=self.remaining / self.rate_per_day)

    @property
    def projection_note(self) -> str:
        if not self.mappings:
            return "No mappings imported yet."
        if self.decommission_ready:
            return "Every mapping is fingerprinted."
        if self.rate_per_day <= 0:
            return f"No progress in the last {PROJECTION_WINDOW_DAYS} days."
        return (
            f"At {self.rate_per_day:.1f} fingerprinted per day "
            f"(the last {PROJECTION_WINDOW_DAYS} days)."
        )


def cutover_summary(*, with_points: bool = False) -> CutoverSummary:
    """Totals, open anomalies and the projection: two queries at any fleet size.

    1. every ``CutoverDay`` row (a few hundred at most), summed here;
    2. COUNT of the open anomalies (partial unique index ``anomaly_open_uniq``).
    """
    now = timezone.now()
    today = now.date()
    window_start = today - dt.timedelta(days=PROJECTION_WINDOW_DAYS - 1)
    rows = CutoverDay.objects.order_by("day").values_list(
        "day", "mappings", "rotated", "confirmed", "fingerprinted", "released"
    )
    totals = [0, 0, 0, 0, 0]
    in_window = 0
    points: list[BurndownPoint] = []
    for day, *deltas in rows:
        totals = [t + d for t, d in zip(totals, deltas, strict=True)]
        if day >= window_start:
            in_window += deltas[3]
        if with_points:
            points.append(BurndownPoint(day, *totals))
    anomalies_open = FingerprintAnomaly.objects.filter(resolved_at__isnull=True).count()
    mappings, rotated, confirmed, fingerprinted, released = totals
    return CutoverSummary(
        now=now,
        mappings=mappings,
        rotated=rotated,
        confirmed=confirmed,
        fingerprinted=fingerprinted,
        released=released,
        anomalies_open=anomalies_open,
        fingerprinted_in_window=max(in_window, 0),
        points=tuple(points),
    )


def burndown_series(
    points: tuple[BurndownPoint, ...], *, until: dt.date, min_days: int = 14
) -> list[BurndownPoint]:
    """One point per day from the first counted day (at least ``min_days`` back) to
    ``until``, days without a row carrying the previous totals."""
    start = until - dt.timedelta(days=min_days - 1)
    if points:
        start = min(start, points[0].day)
    by_day = {point.day: point for point in points}
    current = BurndownPoint(start, 0, 0, 0, 0, 0)
    series = []
    day = start
    last = max(until, points[-1].day) if points else until
    while day <= last:
        current = replace(by_day.get(day, current), day=day)
        series.append(current)
        day += dt.timedelta(days=1)
    return series


# --- Lists ----------------------------------------------------------------------------------


def last_contact(mapping: LegacyMapping) -> dt.datetime | None:
    """The latest sign of life: legacy side, our proxy endpoint or a native heartbeat."""
    stamps = [
        mapping.legacy_last_seen_at,
        mapping.last_attempt_at,
        mapping.system.last_heartbeat_at,
    ]
    return max((s for s in stamps if s is not None), default=None)


def stragglers(kind: str) -> QuerySet[LegacyMapping]:
    """Mappings stuck before a step, oldest first, in the order of their partial index.

    ``not_rotated``: ``mapping_not_rotated_idx`` (created_at, id) WHERE rotated_at IS NULL.
    ``unconfirmed``: ``mapping_unconfirmed_idx`` (rotated_at, id) WHERE rotated_at IS NOT
    NULL AND confirmed_at IS NULL. Slice it: ORDER BY + LIMIT reads the index in order.
    """
    mappings = LegacyMapping.objects.select_related("system__organization")
    if kind == "not_rotated":
        return mappings.filter(rotated_at__isnull=True).order_by("created_at", "id")
    if kind == "unconfirmed":
        return mappings.filter(rotated_at__isnull=False, confirmed_at__isnull=True).order_by(
            "rotated_at", "id"
        )
    raise ValueError(f"unknown straggler kind {kind!r}")


def stragglers_list(kind: str, limit: int = 50) -> list[LegacyMapping]:
    """The ``limit`` oldest stragglers of a kind, each with ``last_contact_at`` set; the
    unconfirmed ones with ``pending_secrets`` too (in the same query)."""
    queryset = stragglers(kind)
    if kind == "unconfirmed":
        cutoff = timezone.now() - dt.timedelta(minutes=settings.ROTATION_GRACE_MINUTES)
        pending = (
            PendingSecret.objects.filter(system_id=OuterRef("system_id"), issued_at__gte=cutoff)
            .values("system_id")
            .annotate(n=Count("pk"))
            .values("n")
        )
        queryset = queryset.annotate(pending_secrets=Coalesce(Subquery(pending), 0))
    rows = list(queryset[:limit])
    for mapping in rows:
        mapping.last_contact_at = last_contact(mapping)
    return rows


def knocking() -> QuerySet[LegacyMapping]:
    """Confirmed mappings that presented their legacy pair after their native credentials
    were used (answered 409), latest first: clusters restored from a backup taken before
    their cutover, which need re-opening. Walks ``mapping_knocked_idx``; the knock must be
    later than the confirmation (a re-opened mapping that confirmed again has stopped)."""
    return (
        LegacyMapping.objects.select_related("system__organization")
        .filter(knocked_at__isnull=False, confirmed_at__isnull=False)
        .filter(knocked_at__gt=F("confirmed_at"))
        .order_by("-knocked_at")
    )


def knocking_list(limit: int = 50) -> list[LegacyMapping]:
    return list(knocking()[:limit])


def refused_latest(limit: int = 20) -> list[LegacyMapping]:
    """Mappings whose last ``/proxy/credentials`` call was refused (400, 401, 403, 409,
    429), latest first, on ``mapping_refused_idx``."""
    return list(
        LegacyMapping.objects.select_related("system__organization")
        .filter(~Q(last_attempt_outcome__in=NOT_REFUSED))
        .order_by("-last_attempt_at")[:limit]
    )


def attempts_by_outcome(*, since: dt.date | None = None) -> dict[str, int]:
    """``/proxy/credentials`` calls per outcome (all days, or from ``since`` on): one
    aggregate over a few rows a day."""
    rows = ProxyAttemptDay.objects.all()
    if since is not None:
        rows = rows.filter(day__gte=since)
    return {
        row["outcome"]: row["total"]
        for row in rows.values("outcome").annotate(total=Sum("count")).order_by("outcome")
    }


def anomalies_open(limit: int = 20) -> list[FingerprintAnomaly]:
    """The open anomalies seen most recently (there are few; see the report)."""
    return list(
        FingerprintAnomaly.objects.filter(resolved_at__isnull=True)
        .select_related("system__organization")
        .order_by("-last_seen_at", "-id")[:limit]
    )


def rotation_runs_latest(limit: int = 5) -> list[RotationRun]:
    return list(RotationRun.objects.select_related("created_by").order_by("-created_at")[:limit])


MAPPING_STATES = ("legacy", "rotated", "confirmed", "fingerprinted", "released")


def mappings_in_state(mappings: QuerySet[LegacyMapping], state: str) -> QuerySet[LegacyMapping]:
    """Filter by the furthest step reached (``LegacyMapping.state``); ``released`` is
    orthogonal to the steps: the legacy slot was freed, whatever the step."""
    if state == "legacy":
        return mappings.filter(rotated_at__isnull=True, fingerprint_at__isnull=True)
    if state == "rotated":
        return mappings.filter(
            rotated_at__isnull=False, confirmed_at__isnull=True, fingerprint_at__isnull=True
        )
    if state == "confirmed":
        return mappings.filter(confirmed_at__isnull=False, fingerprint_at__isnull=True)
    if state == "fingerprinted":
        return mappings.filter(fingerprint_at__isnull=False)
    if state == "released":
        return mappings.filter(released_at__isnull=False)
    raise ValueError(f"unknown mapping state {state!r}")


def mappings_search(mappings: QuerySet[LegacyMapping], term: str) -> QuerySet[LegacyMapping]:
    """Exact ``legacy_system_id`` or ``system_key``: two unique-index lookups.

    The system is resolved first: an OR across the join would scan every mapping.
    """
    from fleet_app.models import System

    term = term.strip()
    system_ids = list(System.objects.filter(system_key=term).values_list("pk", flat=True))
    return mappings.filter(legacy_system_id=term) | mappings.filter(system_id__in=system_ids)


def mapping_imports_visible_to(user) -> QuerySet[MappingImportRun]:
    """The mapping imports of the user's subtree (those started by its staff)."""
    return access.scope_queryset(user, MappingImportRun.objects.all()).select_related(
        "organization", "created_by"
    )
