"""The admin's shared classes, which every app's admin builds on.

- ``TableAdminMixin`` makes the permission table (access.py) decide for every model
  admin; ``admin_registry_enforce_table`` puts it in front of admins registered by other
  packages (axes, knox) too.
- ``FleetModelAdmin`` adds no full-table count, scoped FK choices and change-page
  actions (``form_action``); ``ReadOnlyModelAdmin`` is for history the product writes
  itself; ``AuditedModelAdmin`` writes an audit row for every form change, in the
  transaction of the change.
- The big tables never run a full-table COUNT: ``EstimatedCountPaginator`` asks
  PostgreSQL's planner for the size of an unfiltered list.
"""

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IS_POPUP_VAR, csrf_protect_m
from django.contrib.admin.utils import model_format_dict, unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import BadRequest, PermissionDenied
from django.core.paginator import Paginator
from django.db import connections, models, router, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.functional import cached_property
from django.utils.html import format_html

from .. import access, selectors, services
from ..models import Organization

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


# --- Organization filters ----------------------------------------------------------------


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


class SystemOrganizationFilter(OrganizationFilter):
    organization_path = "system__organization__path"
