"""Systems: created by ``system_create`` (the secret is shown once), changed through
actions that call their services, soft-deleted, never hard-deleted.
"""

import datetime as dt
import json
import secrets

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.db import router, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html_join
from django.views.decorators.debug import sensitive_variables

from .. import sealing, services
from ..models import System
from .base import AuditedModelAdmin, EstimatedCountPaginator, OrganizationFilter, form_action
from .confirm import confirm_first

# The page that shows issued secrets must be opened within this many seconds of the POST
# that issued them (it is the page that POST redirects to).
SECRET_PAGE_SECONDS = 600
_SEALED_KEY = "fleet:issued-secrets:"


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return System.Status.choices

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.with_status_filter(self.value())


class LastSeenFilter(admin.SimpleListFilter):
    title = "last seen"
    parameter_name = "last_seen"
    WITHIN = {
        "hour": dt.timedelta(hours=1),
        "day": dt.timedelta(days=1),
        "week": dt.timedelta(weeks=1),
    }

    def lookups(self, request, model_admin):
        return (
            ("hour", "Last hour"),
            ("day", "Last day"),
            ("week", "Last week"),
            ("older", "Older than a week"),
            ("never", "Never"),
        )

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        now = timezone.now()
        if value in self.WITHIN:
            return queryset.filter(last_heartbeat_at__gte=now - self.WITHIN[value])
        if value == "older":
            return queryset.filter(last_heartbeat_at__lt=now - self.WITHIN["week"])
        if value == "never":
            return queryset.filter(last_heartbeat_at__isnull=True)
        return queryset.none()


class LifecycleFilter(admin.SimpleListFilter):
    title = "lifecycle"
    parameter_name = "lifecycle"

    def lookups(self, request, model_admin):
        return (("enabled", "Enabled"), ("suspended", "Suspended"), ("deleted", "Deleted"))

    def queryset(self, request, queryset):
        value = self.value()
        if value == "enabled":
            return queryset.filter(suspended_at__isnull=True, deleted_at__isnull=True)
        if value == "suspended":
            return queryset.filter(suspended_at__isnull=False, deleted_at__isnull=True)
        if value == "deleted":
            return queryset.filter(deleted_at__isnull=False)
        return queryset if value is None else queryset.none()


@sensitive_variables("payload")
def _issued_secrets_redirect(
    request: HttpRequest, issued: list[services.IssuedSecret]
) -> HttpResponseRedirect:
    """POST → redirect → GET: the secrets wait, sealed in the session, for the one page
    that shows them; a refresh of that page shows nothing and creates nothing."""
    ticket = secrets.token_urlsafe(16)
    payload = json.dumps([[item.system.pk, item.system_secret] for item in issued])
    request.session[_SEALED_KEY + ticket] = sealing.seal(
        payload.encode(), purpose=_SEALED_KEY + ticket
    )
    return HttpResponseRedirect(reverse("admin:fleet_app_system_secret", args=[ticket]))


@sensitive_variables("pairs", "issued")
def _issued_secrets_response(
    model_admin: admin.ModelAdmin, request: HttpRequest, ticket: str
) -> HttpResponse:
    """The one page that ever shows these secrets, once; the admin views are never cached."""
    sealed = request.session.pop(_SEALED_KEY + ticket, None)
    clear = (
        sealing.unseal(sealed, purpose=_SEALED_KEY + ticket, max_age=SECRET_PAGE_SECONDS)
        if isinstance(sealed, str)
        else None
    )
    # The session is saved at the end of the response: two requests racing for the same
    # page are told apart here, and only the first one shows the secrets.
    first = clear is not None and cache.add(f"{_SEALED_KEY}shown:{ticket}", 1, SECRET_PAGE_SECONDS)
    issued: list[services.IssuedSecret] = []
    if first and clear is not None:
        pairs = json.loads(clear)
        found = model_admin.get_queryset(request).select_related("organization")
        systems = found.in_bulk([pk for pk, _ in pairs])
        issued = [
            services.IssuedSecret(system=systems[pk], system_secret=secret)
            for pk, secret in pairs
            if pk in systems
        ]
    context = {
        **model_admin.admin_site.each_context(request),
        "title": (
            "Already shown"
            if not issued
            else "Copy the system secret now"
            if len(issued) == 1
            else "Copy the secrets now"
        ),
        "opts": model_admin.opts,
        "issued": issued,
        "register_url": settings.PUBLIC_BASE_URL.rstrip("/") + "/backend/api/systems/register",
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(
        request,
        "admin/fleet_app/system/secret_issued.html",
        context,
        status=200 if issued else 410,
    )


class SystemAddForm(forms.ModelForm):
    class Meta:
        model = System
        fields = ("organization", "name", "type")


@admin.register(System)
class SystemAdmin(AuditedModelAdmin):
    """Systems are created by ``system_create`` (the secret is shown once), changed by
    their services through actions, and soft-deleted: the admin never hard-deletes one.
    """

    paginator = EstimatedCountPaginator
    list_display = (
        "name",
        "ui_name",
        "system_key",
        "organization",
        "type",
        "status",
        "last_heartbeat_at",
        "lifecycle",
        "created_at",
    )
    list_filter = (StatusFilter, LastSeenFilter, LifecycleFilter, OrganizationFilter, "type")
    list_select_related = ("organization",)
    search_fields = ("name", "ui_name", "=system_key", "fqdn", "organization__name")
    # The two halves of the credential are never shown, not even read-only.
    exclude = ("secret_public", "secret_digest")
    actions = ("suspend", "reactivate", "soft_delete", "reissue_secret")
    fieldsets = (
        (None, {"fields": ("name", "organization", "status", "lifecycle")}),
        ("Credentials", {"fields": ("system_key", "registered_at")}),
        (
            "Reported by the system",
            {
                "fields": (
                    "ui_name",
                    "type",
                    "fqdn",
                    "ipv4_address",
                    "ipv6_address",
                    "version",
                    "last_heartbeat_at",
                    "last_inventory_at",
                )
            },
        ),
        ("History", {"fields": ("created_at", "created_by", "suspended_at", "deleted_at")}),
        ("Related", {"fields": ("related",)}),
    )
    add_fieldsets = ((None, {"fields": ("organization", "name", "type")}),)
    readonly_fields = (
        "status",
        "lifecycle",
        "system_key",
        "registered_at",
        "ui_name",
        "type",
        "fqdn",
        "ipv4_address",
        "ipv6_address",
        "version",
        "last_heartbeat_at",
        "last_inventory_at",
        "created_at",
        "created_by",
        "suspended_at",
        "deleted_at",
        "related",
    )

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else self.fieldsets

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = SystemAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_urls(self):
        return [
            path(
                "secret/<str:ticket>/",
                self.admin_site.admin_view(self.secret_view),
                name="fleet_app_system_secret",
            ),
            *super().get_urls(),
        ]

    def secret_view(self, request: HttpRequest, ticket: str) -> HttpResponse:
        """The page a create or re-issue redirects to: its secrets once, then never."""
        return _issued_secrets_response(self, request, ticket)

    # Hard delete would take the system's history with it: the soft delete action instead.
    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="status", ordering="last_heartbeat_at")
    def status(self, obj: System) -> str:
        return obj.status

    @admin.display(description="lifecycle")
    def lifecycle(self, obj: System) -> str:
        if obj.deleted_at is not None:
            return "deleted"
        if obj.suspended_at is not None:
            return "suspended"
        return "enabled"

    @admin.display(description="history")
    def related(self, obj: System) -> str:
        system_type = ContentType.objects.get_for_model(System)
        links = [
            ("admin:fleet_app_inventory_changelist", f"system__id__exact={obj.pk}", "Inventories"),
            (
                "admin:fleet_app_inventorychange_changelist",
                f"system__id__exact={obj.pk}",
                "Inventory changes",
            ),
            (
                "admin:fleet_app_auditentry_changelist",
                f"content_type__id__exact={system_type.pk}&object_id={obj.pk}",
                "Audit entries",
            ),
        ]
        return format_html_join(
            " · ", '<a href="{}?{}">{}</a>', ((reverse(u), q, t) for u, q, t in links)
        )

    @sensitive_variables("issued")
    def create_object(self, request, obj, form):
        issued = services.system_create(
            actor=request.user,
            organization=form.cleaned_data["organization"],
            name=form.cleaned_data["name"],
            type=form.cleaned_data.get("type") or "",
        )
        # Kept on the in-memory object only, for response_add; never saved.
        obj._issued_secret = issued
        return issued.system

    @sensitive_variables("issued")
    def response_add(self, request, obj, post_url_continue=None):
        issued = getattr(obj, "_issued_secret", None)
        if issued is None:
            return super().response_add(request, obj, post_url_continue)
        del obj._issued_secret
        self.message_user(request, f"The system “{obj.name}” was created.", messages.SUCCESS)
        return _issued_secrets_redirect(request, [issued])

    # Actions call one service per system, all in one transaction: all or nothing.

    def _apply(self, request, queryset, service, *, skip, done: str) -> None:
        with transaction.atomic(using=router.db_for_write(self.model)):
            systems = [s for s in queryset.select_related("organization") if not skip(s)]
            for system in systems:
                service(actor=request.user, system=system)
        skipped = queryset.count() - len(systems)
        message = f"{len(systems)} system(s) {done}."
        if skipped:
            message += f" {skipped} skipped (already {done} or deleted)."
        self.message_user(request, message, messages.SUCCESS)

    @form_action(
        permissions=["change"],
        description="Suspend selected systems",
    )
    def suspend(self, request, queryset):
        self._apply(
            request,
            queryset,
            services.system_suspend,
            skip=lambda s: s.suspended_at is not None or s.deleted_at is not None,
            done="suspended",
        )

    @form_action(
        permissions=["change"],
        description="Reactivate selected systems",
    )
    def reactivate(self, request, queryset):
        self._apply(
            request,
            queryset,
            services.system_reactivate,
            skip=lambda s: s.suspended_at is None or s.deleted_at is not None,
            done="reactivated",
        )

    @form_action(
        description="Delete selected systems (they stop authenticating; history is kept)",
    )
    @confirm_first(
        verb="Delete",
        consequence="They stop authenticating at once and leave the lists; their history "
        "(inventories, changes, audit entries) is kept.",
        affected=lambda qs: qs.filter(deleted_at__isnull=True).select_related("organization"),
        skipped_why="already deleted",
        name=lambda s: f"{s.name} ({s.system_key}, {s.organization.name})",
    )
    def soft_delete(self, request, queryset):
        self._apply(
            request,
            queryset,
            services.system_delete,
            skip=lambda s: s.deleted_at is not None,
            done="deleted",
        )

    @form_action(
        permissions=["change"],
        description="Re-issue the secret of selected systems (the old one stops working)",
    )
    @confirm_first(
        verb="Re-issue the secret of",
        consequence="Each gets a new secret, shown once on the next page; its old secret "
        "stops working at once, so the system fails to authenticate until its operator "
        "puts the new one in place.",
        affected=lambda qs: qs.filter(deleted_at__isnull=True).select_related("organization"),
        skipped_why="deleted systems have no secret",
        name=lambda s: f"{s.name} ({s.system_key}, {s.organization.name})",
    )
    @sensitive_variables("issued")
    def reissue_secret(self, request, queryset):
        with transaction.atomic(using=router.db_for_write(self.model)):
            systems = list(queryset.filter(deleted_at__isnull=True).select_related("organization"))
            issued = [
                services.system_secret_reissue(actor=request.user, system=system)
                for system in systems
            ]
        if not issued:
            self.message_user(request, "No secret re-issued: deleted systems have none.")
            return None
        return _issued_secrets_redirect(request, issued)
