"""Admin for the cutover: proxy mappings, rotation runs, fingerprint anomalies, day counts.

- Nothing here is edited through a form. Mappings change only through the proxy endpoints
  and through the actions below, which call services (which audit) or start a run; the
  change pages are read-only views. Runs are created by actions and commands.
- Scoped like the fleet admin: a staff user who is not a superuser sees the mappings and
  anomalies of the systems in their organization subtree, and the runs started by users
  of that subtree. The day counts are fleet-wide, so only superusers see them.
- The legacy token exists only as a digest and the admin never shows even that.
- ``proxy_mappings`` reaches a million rows: no full-table COUNT (the fleet admin's
  estimated-count paginator), and search is by exact legacy id or system key, which are
  the two unique indexes a search can use.
"""

from typing import Any

from django.contrib import admin, messages
from django.contrib.contenttypes.models import ContentType
from django.db import router, transaction
from django.db.models import Exists, OuterRef, Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from fleet_app import access
from fleet_app import selectors as fleet_selectors
from fleet_app.admin import (
    EstimatedCountPaginator,
    ReadOnlyModelAdmin,
    SystemOrganizationFilter,
    confirm_first,
    form_action,
)
from fleet_app.errors import InvalidInput
from fleet_app.models import System

from . import services
from .models import (
    CutoverDay,
    FingerprintAnomaly,
    LegacyMapping,
    MappingImportRun,
    ProxyAttemptDay,
    RotationRun,
)

# A bulk rotation carries its mapping ids in the run row; beyond this many, the selection
# is too big for one row (and for one click): narrow it, or use a filter-based run.
BULK_ROTATION_MAX_IDS = 10_000


def _open_anomaly() -> Exists:
    return Exists(
        FingerprintAnomaly.objects.filter(system_id=OuterRef("system_id"), resolved_at=None)
    )


def _admin_link(viewname: str, pk: Any, text: Any) -> str:
    return format_html('<a href="{}">{}</a>', reverse(viewname, args=[pk]), text)


def _has_model_perm(request: HttpRequest, model: type, action: str) -> bool:
    opts = model._meta
    return request.user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}")


def _rotation_qualifies(queryset):
    """The selected mappings a rotation run would re-key (its own rule, rotation.py)."""
    from .rotation import rotation_candidates

    return queryset.filter(pk__in=rotation_candidates({}).values("pk"))


# --- Proxy mappings -----------------------------------------------------------------------


class MappingStateFilter(admin.SimpleListFilter):
    """The steps of ``LegacyMapping.state`` (the furthest one reached, exactly as the list
    shows it), plus two that cut across them: released, and an open fingerprint anomaly."""

    title = "state"
    parameter_name = "state"

    STATES = {
        "legacy": Q(rotated_at=None, confirmed_at=None, fingerprint_at=None),
        "rotated": Q(rotated_at__isnull=False, confirmed_at=None, fingerprint_at=None),
        "confirmed": Q(confirmed_at__isnull=False, fingerprint_at=None),
        "fingerprinted": Q(fingerprint_at__isnull=False),
        "released": Q(released_at__isnull=False),
    }

    def lookups(self, request, model_admin):
        return (
            ("legacy", "Legacy (not rotated)"),
            ("rotated", "Rotated (unconfirmed)"),
            ("confirmed", "Confirmed"),
            ("fingerprinted", "Fingerprinted"),
            ("released", "Released"),
            ("anomaly", "With an open fingerprint anomaly"),
        )

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        if value in self.STATES:
            return queryset.filter(self.STATES[value])
        if value == "anomaly":
            return queryset.filter(_open_anomaly())
        return queryset.none()


@admin.register(LegacyMapping)
class LegacyMappingAdmin(ReadOnlyModelAdmin):
    paginator = EstimatedCountPaginator
    list_display = (
        "legacy_system_id",
        "system_key",
        "organization",
        "state",
        "rotated_at",
        "confirmed_at",
        "fingerprint_at",
        "released_at",
        "rotation_count",
    )
    list_filter = (
        MappingStateFilter,
        ("rotated_at", admin.DateFieldListFilter),
        ("confirmed_at", admin.DateFieldListFilter),
        ("fingerprint_at", admin.DateFieldListFilter),
        ("released_at", admin.DateFieldListFilter),
        SystemOrganizationFilter,
    )
    list_select_related = ("system", "system__organization")
    # Declared so the search box shows; get_search_results does the (indexed) lookups.
    search_fields = ("=legacy_system_id", "=system__system_key")
    search_help_text = "An exact legacy_system_id or system key."
    ordering = ("-id",)
    # legacy_token_digest is deliberately absent: not even the digest is shown.
    fieldsets = (
        (None, {"fields": ("legacy_system_id", "system", "organization", "state")}),
        (
            "Cutover",
            {
                "fields": (
                    "created_at",
                    "legacy_last_seen_at",
                    "last_attempt_at",
                    "last_attempt_outcome",
                    "last_attempt_address",
                    "knocked_at",
                    "rotated_at",
                    "rotation_count",
                    "pending_secrets",
                    "rotation_run",
                    "confirmed_at",
                    "fingerprint_at",
                    "migrated_at",
                    "released_at",
                    "reopened_at",
                )
            },
        ),
        ("Related", {"fields": ("related",)}),
    )
    readonly_fields = ("organization", "state", "rotation_run", "pending_secrets", "related")
    actions = ("reopen", "start_rotation")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("system__organization")

    def get_search_results(self, request, queryset, search_term):
        """Exact matches on the two unique indexes.

        ``search_fields``' ``=`` lookups are ``UPPER(x) = UPPER(y)`` across a join, which
        reads the whole table: instead find the system by its key first (keys are upper
        case), then the mappings by legacy id or by that system.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(legacy_system_id__in={term, term.lower()})
        system_id = System.objects.filter(system_key=term.upper()).values_list("pk", flat=True)
        if found := system_id.first():
            match |= Q(system_id=found)
        return queryset.filter(match), False

    def has_reopen_permission(self, request: HttpRequest) -> bool:
        return _has_model_perm(request, LegacyMapping, "change")

    def has_rotate_permission(self, request: HttpRequest) -> bool:
        return _has_model_perm(request, LegacyMapping, "change") and _has_model_perm(
            request, RotationRun, "add"
        )

    @admin.display(description="system key", ordering="system__system_key")
    def system_key(self, obj: LegacyMapping) -> str:
        return obj.system.system_key

    @admin.display(description="organization", ordering="system__organization__name")
    def organization(self, obj: LegacyMapping) -> str:
        return obj.system.organization.name

    @admin.display(description="state")
    def state(self, obj: LegacyMapping) -> str:
        return obj.state

    @admin.display(description="secrets pending")
    def pending_secrets(self, obj: LegacyMapping) -> str:
        if obj.confirmed_at is not None:
            return "0 (the native credentials are in use)"
        count = fleet_selectors.pending_secrets_count(obj.system)
        return f"{count} (each authenticates until one of them is used)"

    @admin.display(description="last rotation run")
    def rotation_run(self, obj: LegacyMapping) -> str:
        if obj.last_rotation_run_id is None:
            return "-"
        return _admin_link(
            "admin:migrations_app_rotationrun_change",
            obj.last_rotation_run_id,
            f"run {obj.last_rotation_run_id}",
        )

    @admin.display(description="history")
    def related(self, obj: LegacyMapping) -> str:
        mapping_type = ContentType.objects.get_for_model(LegacyMapping)
        links = [
            (
                reverse("admin:fleet_app_auditentry_changelist"),
                f"content_type__id__exact={mapping_type.pk}&object_id={obj.pk}",
                "Audit entries",
            ),
            (
                reverse("admin:migrations_app_fingerprintanomaly_changelist"),
                f"system__id__exact={obj.system_id}",
                "Fingerprint anomalies",
            ),
            (
                reverse("admin:fleet_app_inventory_changelist"),
                f"system__id__exact={obj.system_id}",
                "Inventories",
            ),
        ]
        return format_html_join(" · ", '<a href="{}?{}">{}</a>', links)

    @form_action(
        permissions=["reopen"],
        description=(
            "Re-open mapping (confirmed: allow another rotation; unconfirmed: the pending "
            "secrets work again)"
        ),
    )
    @confirm_first(
        verb="Re-open",
        consequence="A confirmed mapping's legacy pair may rotate again (the next rotation "
        "hands out new native credentials and the ones issued before stop working); an "
        "unconfirmed one's pending secrets authenticate again.",
        affected=lambda qs: qs.filter(rotated_at__isnull=False).select_related("system"),
        skipped_why="never rotated, nothing to re-open",
        name=lambda m: f"{m.legacy_system_id} → {m.system.system_key}",
    )
    def reopen(self, request, queryset):
        # One transaction: every selected mapping is re-opened and audited, or none.
        with transaction.atomic(using=router.db_for_write(LegacyMapping)):
            mappings = list(queryset.filter(rotated_at__isnull=False))
            for mapping in mappings:
                services.mapping_reopen(actor=request.user, mapping=mapping)
        skipped = queryset.count() - len(mappings)
        message = (
            f"{len(mappings)} mapping(s) re-opened: a confirmed one may rotate again, the "
            "secrets pending for an unconfirmed one authenticate again."
        )
        if skipped:
            message += f" {skipped} skipped (never rotated, nothing to re-open)."
        self.message_user(request, message, messages.SUCCESS)

    @admin.action(
        permissions=["rotate"],
        description="Start bulk rotation of selected mappings",
    )
    @confirm_first(
        verb="Rotate",
        consequence="A rotation run re-keys each of these mappings: its system gets a new "
        "native secret and its legacy client must fetch it (through /proxy/credentials) "
        "before it can authenticate again.",
        affected=lambda qs: _rotation_qualifies(qs).select_related("system"),
        skipped_why="confirmed, released, suspended or deleted, or asked for their pair "
        "moments ago: their credentials are in use",
        name=lambda m: f"{m.legacy_system_id} → {m.system.system_key}",
    )
    def start_rotation(self, request, queryset):
        limit = BULK_ROTATION_MAX_IDS
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: limit + 1])
        if len(ids) > limit:
            self.message_user(
                request,
                f"More than {limit} mappings selected: narrow the selection "
                "with the filters and start several runs.",
                messages.ERROR,
            )
            return
        try:
            # Imported here: the rotation module is optional for the rest of this admin.
            from .rotation import rotation_run_start
        except ImportError:
            self.message_user(
                request, "Bulk rotation is not available in this deployment.", messages.ERROR
            )
            return
        try:
            run = rotation_run_start(actor=request.user, filters={"ids": ids})
        except InvalidInput as error:
            self.message_user(request, f"No run started: {error.message}", messages.ERROR)
            return
        # The run re-keys only the mappings whose native credentials are not in use
        # (not confirmed, not released, system enabled): its total says how many.
        self.message_user(
            request,
            format_html(
                "Rotation run {} started: {} of the {} selected mapping(s) qualify. {}",
                run.pk,
                run.total,
                len(ids),
                _admin_link("admin:migrations_app_rotationrun_change", run.pk, "Follow it"),
            ),
            messages.SUCCESS,
        )


# --- Rotation runs ------------------------------------------------------------------------


@admin.register(RotationRun)
class RotationRunAdmin(ReadOnlyModelAdmin):
    list_display = (
        "id",
        "state",
        "phase",
        "progress",
        "failed",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
    )
    list_filter = ("state", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("created_by",)
    ordering = ("-created_at", "-id")
    changelist_defer = ("log", "filters")
    fieldsets = (
        (None, {"fields": ("state", "phase", "progress", "done", "failed", "total")}),
        ("Who and when", {"fields": ("created_by", "created_at", "started_at", "finished_at")}),
        ("Work", {"fields": ("selection", "chunk_size", "cursor", "updated_at")}),
        ("Error", {"fields": ("error_text",)}),
        ("Log", {"fields": ("log_text",)}),
    )
    readonly_fields = ("progress", "selection", "error_text", "log_text")

    @admin.display(description="progress")
    def progress(self, obj: RotationRun) -> str:
        percent = obj.percent
        return format_html(
            '<progress value="{}" max="100" class="run-progress" title="{}%">{}%</progress> '
            "{}/{} ({}%)",
            percent,
            percent,
            percent,
            obj.done,
            obj.total,
            percent,
        )

    @admin.display(description="filters")
    def selection(self, obj: RotationRun) -> str:
        filters = dict(obj.filters or {})
        ids = filters.pop("ids", None)
        parts = [f"{key}={value}" for key, value in sorted(filters.items())]
        if ids is not None:
            parts.insert(0, f"{len(ids)} selected mapping(s)")
        return ", ".join(parts) or "all mappings"

    @admin.display(description="error")
    def error_text(self, obj: RotationRun) -> str:
        return format_html('<pre class="run-text">{}</pre>', obj.error) if obj.error else "-"

    @admin.display(description="log")
    def log_text(self, obj: RotationRun) -> str:
        return format_html('<pre class="run-text">{}</pre>', obj.log) if obj.log else "-"


# --- Fingerprint anomalies ----------------------------------------------------------------


class ResolvedFilter(admin.SimpleListFilter):
    title = "resolved"
    parameter_name = "resolved"

    def lookups(self, request, model_admin):
        return (("no", "Open"), ("yes", "Resolved"))

    def queryset(self, request, queryset):
        value = self.value()
        if value == "no":
            return queryset.filter(resolved_at=None)
        if value == "yes":
            return queryset.filter(resolved_at__isnull=False)
        return queryset if value is None else queryset.none()


@admin.register(FingerprintAnomaly)
class FingerprintAnomalyAdmin(ReadOnlyModelAdmin):
    list_display = (
        "kind",
        "system",
        "claimed_legacy_system_id",
        "expected_legacy_system_id",
        "occurrences",
        "first_seen_at",
        "last_seen_at",
        "resolved",
    )
    list_filter = ("kind", ResolvedFilter, SystemOrganizationFilter)
    list_select_related = ("system",)
    search_fields = ("claimed_legacy_system_id",)
    ordering = ("-last_seen_at", "-id")
    fields = (
        "kind",
        "system",
        "claimed_legacy_system_id",
        "expected_legacy_system_id",
        "claimed_mapping",
        "occurrences",
        "first_seen_at",
        "last_seen_at",
        "inventory_link",
        "resolved_at",
    )
    readonly_fields = ("claimed_mapping", "inventory_link", "fit")
    actions = ("resolve",)

    # Whether a claimed legacy id is unknown or belongs to another system is a fact about
    # the whole fleet: a tenant's staff are told only that it does not fit, so an anomaly
    # never reveals whether a legacy id exists in another tenant.
    @staticmethod
    def _fleet_wide(request: HttpRequest) -> bool:
        return access.allowed(request.user, "route", "cutover-anomaly-list", "v")

    def _tenant_view(self, request: HttpRequest, names: tuple) -> tuple:
        if self._fleet_wide(request):
            return names
        shown = tuple("fit" if name == "kind" else name for name in names)
        return tuple(name for name in shown if name != "claimed_mapping")

    def get_list_display(self, request):
        return self._tenant_view(request, super().get_list_display(request))

    def get_list_filter(self, request):
        filters = super().get_list_filter(request)
        return filters if self._fleet_wide(request) else tuple(f for f in filters if f != "kind")

    def get_fields(self, request, obj=None):
        return self._tenant_view(request, tuple(super().get_fields(request, obj)))

    def lookup_allowed(self, lookup, value, request):
        if lookup.split("__")[0] == "kind" and not self._fleet_wide(request):
            return False
        return super().lookup_allowed(lookup, value, request)

    @admin.display(description="kind")
    def fit(self, obj: FingerprintAnomaly) -> str:
        return "Does not fit this system's mapping"

    def has_resolve_permission(self, request: HttpRequest) -> bool:
        return _has_model_perm(request, FingerprintAnomaly, "change")

    @admin.display(description="resolved", boolean=True, ordering="resolved_at")
    def resolved(self, obj: FingerprintAnomaly) -> bool:
        return obj.resolved_at is not None

    @admin.display(description="inventory")
    def inventory_link(self, obj: FingerprintAnomaly) -> str:
        # By id: loading the inventory would read its whole document.
        if obj.inventory_id is None:
            return "-"
        return _admin_link(
            "admin:fleet_app_inventory_change", obj.inventory_id, f"inventory {obj.inventory_id}"
        )

    @admin.display(description="mapping of the claimed id")
    def claimed_mapping(self, obj: FingerprintAnomaly) -> str:
        mapping = (
            LegacyMapping.objects.filter(legacy_system_id=obj.claimed_legacy_system_id)
            .only("pk", "legacy_system_id")
            .first()
        )
        if mapping is None:
            return "-"
        return _admin_link("admin:migrations_app_legacymapping_change", mapping.pk, mapping)

    @form_action(
        permissions=["resolve"],
        description="Mark resolved",
    )
    def resolve(self, request, queryset):
        with transaction.atomic(using=router.db_for_write(FingerprintAnomaly)):
            anomalies = list(queryset.filter(resolved_at=None).select_related("system"))
            for anomaly in anomalies:
                services.anomaly_resolve(actor=request.user, anomaly=anomaly)
        self.message_user(
            request, f"{len(anomalies)} anomaly(ies) marked resolved.", messages.SUCCESS
        )


# --- Day counts ---------------------------------------------------------------------------


@admin.register(CutoverDay)
class CutoverDayAdmin(ReadOnlyModelAdmin):
    """The fleet-wide burn-down, read-only; superusers only, since it is not scoped."""

    list_display = ("day", "mappings", "rotated", "confirmed", "fingerprinted", "released")
    list_filter = (("day", admin.DateFieldListFilter),)
    ordering = ("-day",)
    actions = None


@admin.register(ProxyAttemptDay)
class ProxyAttemptDayAdmin(ReadOnlyModelAdmin):
    """``/proxy/credentials`` calls per day and outcome, fleet-wide, read-only."""

    list_display = ("day", "outcome", "count")
    list_filter = ("outcome", ("day", admin.DateFieldListFilter))
    ordering = ("-day", "outcome")
    actions = None


# --- Mapping imports ----------------------------------------------------------------------


@admin.register(MappingImportRun)
class MappingImportRunAdmin(ReadOnlyModelAdmin):
    """Uploads of mappings, as history; they are started and confirmed on their page."""

    list_display = ("id", "mode", "file_name", "state", "phase", "created_by", "created_at", "page")
    list_filter = ("mode", "state")
    list_select_related = ("created_by",)
    ordering = ("-created_at", "-id")
    changelist_defer = ("log", "report")
    exclude = ("stored_name",)
    readonly_fields = ("page",)

    @admin.display(description="page")
    def page(self, obj: MappingImportRun) -> str:
        return format_html(
            '<a href="{}">Open</a>', reverse("mappings-import-run", kwargs={"run_id": obj.pk})
        )
