"""Admin for the fleet: scoped to the staff user's organization subtree, audited.

- Every queryset comes from ``selectors.*_visible_to(request.user)``, so a row outside the
  user's subtree is "does not exist", and foreign-key choices are scoped the same way.
- Every change staff make through a form goes through ``AuditedModelAdmin``, which writes
  an audit row (before/after) in the transaction the admin opened for the change. Systems
  and organizations are created by their services, which audit themselves.
- The big tables (systems, inventories, changes, audit entries) never run a full-table
  COUNT: ``show_full_result_count`` is off and ``EstimatedCountPaginator`` asks PostgreSQL's
  planner for the size of an unfiltered list.
- A system secret exists in clear only in the response that shows it once; it is never
  put into a message, a session or a log.
"""

import datetime as dt
import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IS_POPUP_VAR, csrf_protect_m
from django.contrib.admin.utils import model_format_dict, unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.contrib.auth.hashers import is_password_usable
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import BadRequest, PermissionDenied
from django.core.paginator import Paginator
from django.db import connections, models, router, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables

from . import access, selectors, services
from .errors import InvalidInput
from .models import AuditEntry, Inventory, InventoryChange, Organization, System, User

admin.site.site_header = "Cutover administration"
admin.site.site_title = "Cutover"
admin.site.index_title = "Fleet, migrations and backups"

# --- Counting big tables ------------------------------------------------------------------

# Above this many rows (by the planner's estimate) an unfiltered changelist shows the
# estimate instead of running COUNT(*), which reads the whole table on PostgreSQL.
ESTIMATED_COUNT_THRESHOLD = 10_000


def table_row_estimate(queryset: QuerySet) -> int | None:
    """The planner's row estimate for the queryset's table, or None where there is none.

    ``reltuples`` is kept up to date by autovacuum/ANALYZE; it is -1 for a table that has
    never been analyzed (PostgreSQL 14+), which is reported as None.
    """
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    table = connection.ops.quote_name(queryset.model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table])
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < 0:
        return None
    return int(row[0])


def _is_unfiltered(queryset: QuerySet) -> bool:
    """True when the queryset is "every row of the table" (ordering and joins aside).

    select_related joins follow non-null foreign keys, so they do not drop rows.
    """
    query = queryset.query
    return (
        not query.where
        and not query.distinct
        and not query.combinator
        and query.low_mark == 0
        and query.high_mark is None
    )


class EstimatedCountPaginator(Paginator):
    """A paginator whose count of an unfiltered big table is the planner's estimate.

    Filtered lists (a search, a filter, a staff user scoped to a subtree) are counted for
    real: they are what indexes are for, and their counts are expected to be exact.
    """

    @cached_property
    def count(self) -> int:
        object_list = self.object_list
        if isinstance(object_list, QuerySet) and _is_unfiltered(object_list):
            estimate = table_row_estimate(object_list)
            if estimate is not None and estimate > ESTIMATED_COUNT_THRESHOLD:
                return estimate
        return super().count


# --- Shared pieces ------------------------------------------------------------------------


def pretty_json(value: Any) -> str:
    """JSON as an indented, escaped <pre> block for a read-only admin field."""
    if value is None:
        return "-"
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="fleet-json">{}</pre>', text)


def _shorten(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- Actions on the change form -----------------------------------------------------------

# The prefix of the change form's action field (what Django 6.1's ``ActionLocation.CHANGE_FORM``
# posts), so a form, a bookmark or a test written for either works with both.
FORM_ACTION_PREFIX = "CHANGE_FORM"


def form_action(**kwargs: Any):
    """``admin.action`` for an action offered on an object's change page as well as on the
    list: staff act on the object they are looking at without going back to the list."""

    def decorator(func):
        func = admin.action(**kwargs)(func)
        func.on_change_form = True
        return func

    return decorator


class TableAdminMixin:
    """The permission table (access.py) decides for every model admin, in this one place.

    View, add, change and delete come from the model's row; the rows a user sees are
    scoped by ``access.scope_queryset``; an action is offered only when its own row
    grants ``run`` (``delete_selected`` follows the model's delete right). A model with
    no row is refused to everyone. A subclass may refuse more, never grant more.
    """

    def _table(self, request: HttpRequest, right: str) -> bool:
        return access.allowed(request.user, "model", access.model_key(self.model), right)

    def has_view_permission(self, request, obj=None):
        return self._table(request, "v")

    def has_add_permission(self, request, *args):
        return self._table(request, "a")

    def has_change_permission(self, request, obj=None):
        return self._table(request, "c")

    def has_delete_permission(self, request, obj=None):
        return self._table(request, "d")

    def has_module_permission(self, request):
        return self._table(request, "v")

    def get_queryset(self, request):
        return access.scope_queryset(request.user, super().get_queryset(request))

    def response_action(self, request, queryset):
        # An action the table does not offer this user (a forged or stale form) is refused
        # outright, audited, rather than answered "no action selected".
        try:
            index = int(request.POST.get("index", 0))
        except ValueError:
            index = 0
        names = request.POST.getlist("action")
        name = names[index] if 0 <= index < len(names) else ""
        if name and name not in self.get_actions(request):
            raise PermissionDenied(f"action {access.model_key(self.model)}.{name}")
        return super().response_action(request, queryset)

    def get_actions(self, request):
        actions = super().get_actions(request)
        key = access.model_key(self.model)
        return {
            name: action
            for name, action in actions.items()
            if (
                self._table(request, "d")
                if name == "delete_selected"
                else access.allowed(request.user, "action", f"{key}.{name}", "r")
            )
        }


def admin_registry_enforce_table(site: admin.AdminSite = admin.site) -> None:
    """Every registered model admin answers to the table, other apps' (axes, knox) too:
    one that does not derive from TableAdminMixin is registered again with it in front."""
    for model, model_admin in list(site._registry.items()):
        if isinstance(model_admin, TableAdminMixin):
            continue
        cls = type(model_admin)
        site.unregister(model)
        site.register(
            model, type(cls.__name__, (TableAdminMixin, cls), {"__module__": cls.__module__})
        )


class FleetModelAdmin(TableAdminMixin, admin.ModelAdmin):
    """Defaults for every admin: the permission table, no full-table count, FK choices
    scoped, actions marked with ``form_action`` offered on the change page
    (``admin/change_form.html``)."""

    show_full_result_count = False

    def form_actions(self, request: HttpRequest) -> dict[str, tuple]:
        """The change-page actions this user may run (permissions already applied)."""
        return {
            name: action
            for name, action in self.get_actions(request).items()
            if getattr(action[0], "on_change_form", False)
        }

    @csrf_protect_m
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if object_id is None or IS_POPUP_VAR in request.GET or IS_POPUP_VAR in request.POST:
            return super().changeform_view(request, object_id, form_url, extra_context)
        field = f"{FORM_ACTION_PREFIX}-action"
        saving = {"_save", "_continue", "_addanother", "_saveasnew"} & set(request.POST)
        if request.method == "POST" and field in request.POST and not saving:
            return self._form_action_run(request, object_id)
        actions = self.form_actions(request)
        if actions:
            action_form = self.action_form(auto_id=None, prefix=FORM_ACTION_PREFIX)
            action_form.fields["action"].choices = [
                *models.BLANK_CHOICE_DASH,
                *(
                    (name, description % model_format_dict(self.opts))
                    for name, (_, _, description) in actions.items()
                ),
            ]
            extra_context = {**(extra_context or {}), "form_action_form": action_form}
        return super().changeform_view(request, object_id, form_url, extra_context)

    def _form_action_run(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_or_change_permission(request, obj):
            raise PermissionDenied
        # The page posts the id of the object it shows; anything else is a forged request.
        if request.POST.getlist(ACTION_CHECKBOX_NAME) != [str(obj.pk)]:
            raise BadRequest("A change-page action acts on the object of the page.")
        name = request.POST[f"{FORM_ACTION_PREFIX}-action"]
        action = self.form_actions(request).get(name)
        if action is None and name:
            # Not offered to this user: refused and audited (handler403), not ignored.
            raise PermissionDenied(f"action {access.model_key(self.model)}.{name}")
        if action is None:
            self.message_user(request, "No action selected.", messages.WARNING)
            return HttpResponseRedirect(request.get_full_path())
        func = action[0]
        with transaction.atomic(using=router.db_for_write(self.model)):
            response = func(self, request, self.get_queryset(request).filter(pk=obj.pk))
        return response or HttpResponseRedirect(request.get_full_path())

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.remote_field.model is Organization:
            kwargs["queryset"] = selectors.organizations_visible_to(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class ReadOnlyModelAdmin(FleetModelAdmin):
    """History the fleet writes itself: staff look, nobody edits through the admin."""

    paginator = EstimatedCountPaginator
    # Columns too heavy for a list page (a 50 KB inventory document, audit snapshots).
    changelist_defer: tuple[str, ...] = ()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        defer = self.changelist_defer
        if not defer:
            return super().get_changelist(request, **kwargs)

        class DeferringChangeList(ChangeList):
            def get_queryset(self, request, exclude_parameters=None):
                return super().get_queryset(request, exclude_parameters).defer(*defer)

        return DeferringChangeList


class AuditedModelAdmin(FleetModelAdmin):
    """Writes an audit row for every create, update and delete made through a form.

    ``changeform_view`` and ``delete_view`` already run in a transaction; the audit row is
    written inside it, so the change and its audit commit or roll back together. The
    "before" state is read with ``SELECT … FOR UPDATE`` so it is the state the change
    replaced, and only the fields the form changed are written, so a concurrent writer
    (a heartbeat updating ``last_heartbeat_at``) is not overwritten with a stale value.

    A subclass whose objects are created by a service (which audits itself) overrides
    ``create_object``.
    """

    def audit_action(self, verb: str) -> str:
        return f"{self.opts.model_name}.{verb}"

    def audit_organization(self, obj: models.Model, verb: str) -> Organization | None:
        """The organization the entry is filed under; None lets audit_record decide."""
        return None

    def audit_state(self, obj: models.Model) -> dict[str, Any]:
        state = services.audit_snapshot(obj)
        # Group and permission grants are many-to-many: they matter as much as a field.
        for field in obj._meta.many_to_many:
            state[field.name] = sorted(getattr(obj, field.name).values_list("pk", flat=True))
        return state

    def create_object(
        self, request: HttpRequest, obj: models.Model, form: forms.ModelForm
    ) -> models.Model | None:
        """Create through a service and return the new row, or None to save ``obj``."""
        return None

    def save_model(self, request, obj, form, change):
        if change:
            current = self.model._default_manager.select_for_update().get(pk=obj.pk)
            form._audit_before = self.audit_state(current)
            fields = [
                f.name
                for f in obj._meta.concrete_fields
                if f.name in form.changed_data and not f.primary_key
            ]
            if fields:
                obj.save(update_fields=fields)
            return
        created = self.create_object(request, obj, form)
        if created is None:
            obj.save()
            return
        # The admin goes on with ``obj`` (related objects, log entry, redirect): make it
        # the row the service created.
        for field in obj._meta.concrete_fields:
            setattr(obj, field.attname, getattr(created, field.attname))
        obj._state.adding = False
        obj._state.db = created._state.db
        form._audit_done = True

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        if getattr(form, "_audit_done", False):
            return
        obj = form.instance
        before = getattr(form, "_audit_before", None) if change else None
        # The row as it now stands (still locked by save_model): the form's copy of the
        # fields it did not edit may be older than the "before" state.
        after = self.audit_state(self.model._default_manager.get(pk=obj.pk) if change else obj)
        if change and before == after:
            return
        verb = "update" if change else "create"
        services.audit_record(
            actor=request.user,
            action=self.audit_action(verb),
            obj=obj,
            before=before,
            after=after,
            organization=self.audit_organization(obj, verb),
        )

    def _audit_delete(self, request: HttpRequest, obj: models.Model) -> None:
        # Written before the row goes: afterwards it has no primary key to point at.
        services.audit_record(
            actor=request.user,
            action=self.audit_action("delete"),
            obj=obj,
            before=self.audit_state(obj),
            after=None,
            organization=self.audit_organization(obj, "delete"),
        )

    def delete_model(self, request, obj):
        self._audit_delete(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        # The bulk "delete selected" action is not wrapped in a transaction by the admin.
        with transaction.atomic(using=router.db_for_write(self.model)):
            for obj in queryset:
                self._audit_delete(request, obj)
            super().delete_queryset(request, queryset)


# --- Organizations ------------------------------------------------------------------------


class OrganizationForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ("name", "kind", "parent")

    def __init__(self, *args: Any, request: HttpRequest | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.request = request

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is not None or "kind" not in self.fields:
            return cleaned
        kind, parent = cleaned.get("kind"), cleaned.get("parent")
        if not kind:
            return cleaned
        # Checked here too so the form can say it; organization_create checks it again.
        try:
            services.organization_placement_check(kind=kind, parent=parent)
        except InvalidInput as error:
            self.add_error("parent", error.message)
        user = getattr(self.request, "user", None)
        if parent is None and user is not None and not user.is_superuser:
            self.add_error("parent", "Choose the organization the new one sits under.")
        return cleaned


@admin.register(Organization)
class OrganizationAdmin(AuditedModelAdmin):
    form = OrganizationForm
    list_display = ("name", "slug", "kind", "parent", "path", "created_at")
    list_filter = ("kind",)
    list_select_related = ("parent",)
    search_fields = ("name", "=slug", "=path")
    ordering = ("path",)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "kind", "parent")
        return ("name", "slug", "kind", "parent", "path", "created_at")

    def get_readonly_fields(self, request, obj=None):
        # Moving an organization would rewrite the path of its whole subtree: not a form edit.
        # The slug is set once by organization_create: scripts and commands name it.
        if obj is None:
            return ()
        return ("slug", "kind", "parent", "path", "created_at")

    def get_form(self, request, obj=None, change=False, **kwargs):
        form_class = super().get_form(request, obj, change=change, **kwargs)

        class RequestForm(form_class):
            def __init__(self, *args: Any, **kw: Any):
                super().__init__(*args, request=request, **kw)

        return RequestForm

    def audit_organization(self, obj, verb):
        # A deleted organization's entry would lose its organization: file it under the parent.
        return obj.parent if verb == "delete" else obj

    def create_object(self, request, obj, form):
        return services.organization_create(
            actor=request.user,
            name=form.cleaned_data["name"],
            kind=form.cleaned_data["kind"],
            parent=form.cleaned_data.get("parent"),
        )


# --- Users --------------------------------------------------------------------------------


class FleetUserCreationForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "full_name", "organization")

    def clean_email(self) -> str:
        # The unique constraint is conditional on is_active, which this form does not
        # carry, so the model validation skips it: check it here, as the database will.
        email = self.cleaned_data["email"]
        if User.objects.filter(email__iexact=email, is_active=True).exists():
            raise forms.ValidationError("An active account with this e-mail already exists.")
        return email


class FleetUserChangeForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(AuditedModelAdmin, DjangoUserAdmin):
    form = FleetUserChangeForm
    add_form = FleetUserCreationForm
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Personal info", {"fields": ("full_name", "organization")}),
        (
            "Permissions",
            {
                "fields": (
                    "is_active",
                    "is_staff",
                    "is_superuser",
                    "groups",
                    "user_permissions",
                )
            },
        ),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": (
                    "email",
                    "full_name",
                    "organization",
                    "usable_password",
                    "password1",
                    "password2",
                ),
            },
        ),
    )
    # Legacy imports make this a big table too.
    paginator = EstimatedCountPaginator
    list_display = ("email", "full_name", "organization", "is_staff", "is_active", "last_login")
    list_filter = ("is_staff", "is_superuser", "is_active", "groups")
    list_select_related = ("organization",)
    search_fields = ("email", "full_name")
    ordering = ("email",)
    filter_horizontal = ("groups", "user_permissions")

    def get_queryset(self, request):
        users = super().get_queryset(request)
        if not access.is_platform(request.user):
            # A tenant admin cannot edit (or reset the password of) an account above them.
            users = users.filter(is_superuser=False).exclude(groups__name=access.OPERATOR)
        return users

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "groups" and not request.user.is_superuser:
            # A tenant admin hands out the tenant roles only, never the platform's.
            kwargs["queryset"] = Group.objects.filter(name__in=access.TENANT_PERSONAS)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            # Roles are granted through groups; a scoped admin hands out no more than that.
            readonly += ["is_superuser", "user_permissions"]
        return readonly

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "organization" and not request.user.is_superuser:
            # An account without an organization would be invisible to whoever made it.
            kwargs["required"] = True
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @method_decorator(sensitive_post_parameters())
    def user_change_password(self, request, id, form_url=""):
        if request.method != "POST":
            return super().user_change_password(request, id, form_url)
        with transaction.atomic(using=router.db_for_write(self.model)):
            user = self.get_object(request, unquote(id))
            before = user.password if user is not None else None
            response = super().user_change_password(request, id, form_url)
            after = User.objects.filter(pk=user.pk).values_list("password", flat=True).first()
            if after != before:
                user.refresh_from_db()
                services.audit_record(
                    actor=request.user,
                    action="user.password_change",
                    obj=user,
                    before={"has_usable_password": is_password_usable(before)},
                    after={"has_usable_password": user.has_usable_password()},
                )
            return response


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(AuditedModelAdmin, DjangoGroupAdmin):
    """The role groups are global: a scoped admin may grant them, not redefine them.

    The table lets tenant admins view the tenant roles (to grant them); editing a group
    would change what every organization's readers or admins may do, so only superusers
    add, change or delete one. Their edits are audited like any other.
    """

    def get_queryset(self, request):
        groups = super().get_queryset(request)
        if not access.is_platform(request.user):
            return groups.filter(name__in=access.TENANT_PERSONAS)
        return groups


# --- Systems ------------------------------------------------------------------------------


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


class OrganizationFilter(admin.SimpleListFilter):
    """An organization and everything below it, among those the staff user may see."""

    title = "organization (and below)"
    parameter_name = "organization"
    organization_path = "organization__path"

    def lookups(self, request, model_admin):
        rows = list(
            selectors.organizations_visible_to(request.user).values_list("pk", "path", "name")
        )
        self._paths = {pk: path for pk, path, _ in rows}
        return [(str(pk), name) for pk, _, name in rows]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        path = self._paths.get(int(value)) if value.isdigit() else None
        if path is None:
            return queryset.none()
        return queryset.filter(**{f"{self.organization_path}__startswith": path})


def _issued_secrets_response(
    model_admin: admin.ModelAdmin, request: HttpRequest, issued: list[services.IssuedSecret]
) -> HttpResponse:
    """The one page that ever shows these secrets; the admin views are never cached."""
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Copy the system secret now" if len(issued) == 1 else "Copy the secrets now",
        "opts": model_admin.opts,
        "issued": issued,
        "register_url": settings.PUBLIC_BASE_URL.rstrip("/") + "/backend/api/systems/register",
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/fleet_app/system/secret_issued.html", context)


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
    search_fields = ("name", "=system_key", "fqdn", "organization__name")
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
        return _issued_secrets_response(self, request, [issued])

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
        return _issued_secrets_response(self, request, issued)


# --- Inventories and changes --------------------------------------------------------------


class SystemOrganizationFilter(OrganizationFilter):
    organization_path = "system__organization__path"


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


from . import admin_tokens  # noqa: E402, F401 - API tokens, in their own module
