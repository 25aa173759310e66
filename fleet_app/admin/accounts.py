"""Admin for quotas and memberships: platform-wide account records (the permission table
opens them to superusers only); usage is written by the quota jobs, limits edited here."""

from django.contrib import admin

from ..models import Membership, Quota
from .base import AuditedModelAdmin, ReadOnlyModelAdmin


@admin.register(Quota)
class QuotaAdmin(AuditedModelAdmin):
    """Limits are edited here (audited); usage is written by the quota jobs only."""

    list_display = ("holder", "resource", "limit", "effective_limit", "usage", "updated_at")
    list_filter = ("resource",)
    list_select_related = ("organization", "user")
    search_fields = ("organization__name", "user__email")
    fields = ("organization", "user", "resource", "limit", "usage", "updated_at")
    readonly_fields = ("usage", "updated_at")
    raw_id_fields = ("user",)

    @admin.display(description="holder")
    def holder(self, obj: Quota) -> str:
        return str(obj.organization or obj.user)

    @admin.display(description="effective limit")
    def effective_limit(self, obj: Quota) -> int:
        return obj.effective_limit


@admin.register(Membership)
class MembershipAdmin(ReadOnlyModelAdmin):
    list_display = ("user", "organization", "role", "created_at")
    list_filter = ("role",)
    list_select_related = ("user", "organization")
    search_fields = ("user__email", "organization__name")
