"""What the fleet records itself — inventories, the changes found between them, audit
entries: read-only, paginated without a full-table COUNT, heavy columns deferred.
"""

import datetime as dt
import json
from typing import Any

from django.contrib import admin
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html

from ..models import AuditEntry, Inventory, InventoryChange, InventoryInbox
from .base import ReadOnlyModelAdmin, SystemOrganizationFilter, pretty_json


def _shorten(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@admin.register(Inventory)
class InventoryAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "system", "received_at", "size")
    list_filter = (("received_at", admin.DateFieldListFilter), SystemOrganizationFilter)
    list_select_related = ("system",)
    search_fields = ("=system__system_key", "system__name")
    # Primary-key order is arrival order, and walks the primary key index.
    ordering = ("-id",)
    changelist_defer = ("data",)
    fields = ("system", "received_at", "size", "document")
    readonly_fields = ("document",)

    @admin.display(description="data")
    def document(self, obj: Inventory) -> str:
        return pretty_json(obj.data)


class InboxStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (("pending", "Waiting to be processed"), ("failed", "Failed"))

    def queryset(self, request, queryset):
        if self.value() == "pending":
            return queryset.filter(failed_at__isnull=True)
        if self.value() == "failed":
            return queryset.filter(failed_at__isnull=False)
        return queryset


@admin.register(InventoryInbox)
class InventoryInboxAdmin(ReadOnlyModelAdmin):
    """Inventories accepted and not recorded yet, and those that failed, with why."""

    list_display = ("id", "system", "received_at", "size", "failed_at", "error_short")
    list_filter = (InboxStateFilter, SystemOrganizationFilter)
    list_select_related = ("system",)
    search_fields = ("=system__system_key", "system__name")
    ordering = ("-id",)
    changelist_defer = ("body",)
    fields = ("system", "received_at", "size", "digest", "failed_at", "error", "document")
    readonly_fields = ("document",)

    @admin.display(description="error")
    def error_short(self, obj: InventoryInbox) -> str:
        return obj.error if len(obj.error) <= 80 else obj.error[:79] + "…"

    @admin.display(description="body")
    def document(self, obj: InventoryInbox) -> str:
        text = bytes(obj.body).decode("utf-8", "replace")
        try:
            return pretty_json(json.loads(text))
        except ValueError:
            return text[:100_000]


@admin.register(InventoryChange)
class InventoryChangeAdmin(ReadOnlyModelAdmin):
    list_display = ("detected_at", "system", "path", "severity", "old_short", "new_short")
    list_filter = ("severity", ("detected_at", admin.DateFieldListFilter), SystemOrganizationFilter)
    list_select_related = ("system",)
    search_fields = ("path", "=system__system_key", "system__name")
    ordering = ("-id",)
    fields = (
        "system",
        "inventory_link",
        "detected_at",
        "path",
        "severity",
        "old_value",
        "new_value",
    )
    readonly_fields = ("inventory_link", "old_value", "new_value")

    @admin.display(description="inventory")
    def inventory_link(self, obj: InventoryChange) -> str:
        # By id: loading the inventory row would read its whole document.
        url = reverse("admin:fleet_app_inventory_change", args=[obj.inventory_id])
        return format_html('<a href="{}">inventory {}</a>', url, obj.inventory_id)

    @admin.display(description="old")
    def old_short(self, obj: InventoryChange) -> str:
        return _shorten(obj.old)

    @admin.display(description="new")
    def new_short(self, obj: InventoryChange) -> str:
        return _shorten(obj.new)

    @admin.display(description="old")
    def old_value(self, obj: InventoryChange) -> str:
        return pretty_json(obj.old)

    @admin.display(description="new")
    def new_value(self, obj: InventoryChange) -> str:
        return pretty_json(obj.new)


# --- Audit --------------------------------------------------------------------------------


class ActionFilter(admin.SimpleListFilter):
    """Actions recorded in the last RECENT_DAYS days (an index range on ``at``, not a scan
    of the whole log); any other action can still be searched for."""

    title = "action"
    parameter_name = "action"
    RECENT_DAYS = 30

    def lookups(self, request, model_admin):
        since = timezone.now() - dt.timedelta(days=self.RECENT_DAYS)
        actions = set(
            model_admin.get_queryset(request)
            .filter(at__gte=since)
            .order_by()
            .values_list("action", flat=True)
            .distinct()
        )
        if self.value():
            actions.add(self.value())
        return [(action, action) for action in sorted(actions)]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(action=self.value())


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyModelAdmin):
    list_display = ("at", "actor_repr", "action", "object_link", "organization")
    list_display_links = ("at",)
    list_filter = (ActionFilter, ("at", admin.DateFieldListFilter))
    list_select_related = ("content_type", "organization")
    search_fields = ("action", "actor_repr", "object_repr", "=object_id")
    changelist_defer = ("before", "after")
    fields = (
        "at",
        "actor",
        "actor_repr",
        "action",
        "content_type",
        "object_id",
        "object_link",
        "organization",
        "before_json",
        "after_json",
    )
    readonly_fields = ("object_link", "before_json", "after_json")

    @admin.display(description="object", ordering="object_repr")
    def object_link(self, obj: AuditEntry) -> str:
        if obj.content_type_id is None or not obj.object_id:
            return obj.object_repr or "-"
        try:
            url = reverse(
                f"admin:{obj.content_type.app_label}_{obj.content_type.model}_change",
                args=[obj.object_id],
            )
        except NoReverseMatch:
            return obj.object_repr
        return format_html('<a href="{}">{}</a>', url, obj.object_repr)

    @admin.display(description="before")
    def before_json(self, obj: AuditEntry) -> str:
        return pretty_json(obj.before)

    @admin.display(description="after")
    def after_json(self, obj: AuditEntry) -> str:
        return pretty_json(obj.after)
