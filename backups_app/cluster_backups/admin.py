"""Admin for cluster backups: the backups systems uploaded (quota used, streamed download,
audited delete) and the backups per system.

Every queryset is scoped like the fleet's: a backup outside the staff user's organization
subtree does not exist for them.
"""

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import F
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse
from django.utils.html import format_html

from fleet_app import selectors as fleet_selectors
from fleet_app import services as fleet
from fleet_app.admin import EstimatedCountPaginator, FleetModelAdmin
from fleet_app.models import System

from ..errors import BackupCorrupt
from . import selectors, services
from .api.collect import download_response
from .models import ClusterBackup, SystemBackups


@admin.register(ClusterBackup)
class ClusterBackupAdmin(FleetModelAdmin):
    """Backups systems uploaded. Staff look, download (audited) and delete (audited)."""

    paginator = EstimatedCountPaginator
    list_display = (
        "filename",
        "system_link",
        "organization",
        "size_display",
        "uploaded_at",
        "sha256_short",
        "integrity",
        "download_link",
    )
    list_select_related = ("system", "organization")
    search_fields = ("=system__system_key", "system__name", "filename", "=sha256")
    date_hierarchy = None
    ordering = ("-uploaded_at",)
    fields = (
        "id",
        "system",
        "organization",
        "filename",
        "mimetype",
        "size",
        "sha256",
        "uploaded_at",
        "corrupt_at",
        "storage_key",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return selectors.cluster_backups_visible_to(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="System", ordering="system__name")
    def system_link(self, obj: ClusterBackup) -> str:
        url = reverse("admin:backups_app_clusterbackup_changelist")
        return format_html(
            '<a href="{}?system__id__exact={}">{}</a>', url, obj.system_id, obj.system
        )

    @admin.display(description="Size", ordering="size")
    def size_display(self, obj: ClusterBackup) -> str:
        return filesizeformat(obj.size)

    @admin.display(description="SHA-256")
    def sha256_short(self, obj: ClusterBackup) -> str:
        return format_html('<code title="{}">{}…</code>', obj.sha256, obj.sha256[:12])

    @admin.display(description="Integrity")
    def integrity(self, obj: ClusterBackup) -> str:
        return "corrupt" if obj.corrupt_at else "ok"

    @admin.display(description="Download")
    def download_link(self, obj: ClusterBackup) -> str:
        url = reverse("admin:backups_app_clusterbackup_download", args=[obj.pk])
        return format_html('<a href="{}">download</a>', url)

    def changelist_view(self, request, extra_context=None):
        extra_context = extra_context or {}
        system_id = request.GET.get("system__id__exact", "")
        if system_id.isdigit():
            # The quota of the filtered system's organization, shown above the list.
            system = (
                fleet_selectors.systems_visible_to(request.user)
                .filter(pk=int(system_id))
                .select_related("organization")
                .first()
            )
            if system is not None:
                used, limit = services.quota_usage(system.organization_id)
                extra_context["subtitle"] = (
                    f"{system} — organization {system.organization.name} uses "
                    f"{filesizeformat(used)} of {filesizeformat(limit)}"
                )
        return super().changelist_view(request, extra_context)

    def get_urls(self):
        return [
            path(
                "<uuid:object_id>/download/",
                self.admin_site.admin_view(self.download_view),
                name="backups_app_clusterbackup_download",
            ),
            *super().get_urls(),
        ]

    def download_view(self, request: HttpRequest, object_id):
        if not self.has_view_permission(request):
            raise PermissionDenied
        backup = get_object_or_404(self.get_queryset(request), pk=object_id)
        try:
            response = download_response(backup)
        except BackupCorrupt as error:
            self.message_user(request, error.message, messages.ERROR)
            return HttpResponseRedirect(reverse("admin:backups_app_clusterbackup_changelist"))
        fleet.audit_record(
            actor=request.user,
            action="cluster_backup.download",
            obj=backup,
            after={"size": backup.size, "sha256": backup.sha256},
            organization=backup.organization,
        )
        return response

    def delete_model(self, request, obj):
        services.cluster_backup_delete(backup=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for backup in queryset:
            services.cluster_backup_delete(backup=backup, actor=request.user)


@admin.register(SystemBackups)
class SystemBackupsAdmin(FleetModelAdmin):
    """Backups per system: how many, how many bytes, the latest, and the quota used by the
    system's organization."""

    list_display = (
        "name",
        "system_key",
        "organization",
        "backups",
        "stored",
        "last_backup_at",
        "organization_quota",
    )
    list_select_related = ("organization",)
    search_fields = ("=system_key", "name")

    def get_queryset(self, request):
        systems = fleet_selectors.systems_visible_to(request.user).filter(deleted_at__isnull=True)
        # Stalest first: never backed up, then the oldest latest backup.
        return selectors.systems_with_backup_usage(
            SystemBackups.objects.filter(pk__in=systems.values("pk"))
        ).order_by(F("last_backup_at").asc(nulls_first=True), "pk")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Backups", ordering="backup_count")
    def backups(self, obj: System) -> str:
        url = reverse("admin:backups_app_clusterbackup_changelist")
        return format_html(
            '<a href="{}?system__id__exact={}">{}</a>', url, obj.pk, obj.backup_count
        )

    @admin.display(description="Stored", ordering="backup_bytes")
    def stored(self, obj: System) -> str:
        return filesizeformat(obj.backup_bytes)

    @admin.display(description="Latest backup", ordering="last_backup_at")
    def last_backup_at(self, obj: System):
        return obj.last_backup_at

    @admin.display(description="Organization quota used")
    def organization_quota(self, obj: System) -> str:
        percent = round(100 * obj.quota_used / obj.quota_limit) if obj.quota_limit else 100
        return f"{filesizeformat(obj.quota_used)} of {filesizeformat(obj.quota_limit)} ({percent}%)"
