"""Admin for service backups, Cutover's own and so for superusers only: services,
schedules (editable, audited; timed by django-celery-beat entries, whose own admin pages
are re-registered here for superusers only, audited), backup and restore runs.
"""

import copy
import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import RelatedFieldWidgetWrapper
from django.core.serializers.json import DjangoJSONEncoder
from django.db import router, transaction
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from fleet_app import services as fleet
from fleet_app.admin import AuditedModelAdmin, ReadOnlyModelAdmin, pretty_json
from fleet_app.errors import FleetError

from . import restore, schedules, services
from .adapters import AdapterError, get_adapter
from .models import BackupRun, BackupSchedule, RestoreRun, Service


def _progress(obj) -> str:
    return format_html(
        '<progress value="{}" max="100" class="run-progress">{}%</progress> {}',
        obj.percent,
        obj.percent,
        obj.phase,
    )


class ServiceForm(forms.ModelForm):
    class Meta:
        model = Service
        fields = ("name", "adapter", "config", "enabled")

    def clean(self):
        cleaned = super().clean()
        adapter, config = cleaned.get("adapter"), cleaned.get("config")
        if adapter and isinstance(config, dict):
            try:
                get_adapter(adapter).config_check(config)
            except AdapterError as error:
                self.add_error("config", str(error))
        return cleaned


@admin.register(Service)
class ServiceAdmin(AuditedModelAdmin):
    form = ServiceForm
    list_display = ("name", "adapter", "enabled", "created_at")
    list_filter = ("adapter", "enabled")
    search_fields = ("name",)
    actions = ("back_up_now", "drill_now")

    @admin.action(description="Back up now")
    def back_up_now(self, request, queryset):
        for service in queryset:
            try:
                run = services.backup_run_start(actor=request.user, service=service)
            except FleetError as error:
                self.message_user(request, f"{service}: {error.message}", messages.ERROR)
                continue
            self.message_user(request, f"Backup run {run.pk} of {service} queued.")

    @admin.action(description="Run a restore drill of the latest good backup")
    def drill_now(self, request, queryset):
        for service in queryset:
            run = restore.restore_drill_start(service=service)
            if run is None:
                self.message_user(
                    request, f"{service} has no good backup to drill.", messages.WARNING
                )
            else:
                self.message_user(request, f"Drill {run.pk} of {service} queued.")


class BackupScheduleForm(forms.ModelForm):
    """A schedule's own fields plus its timing: one of beat's intervals or crontabs."""

    interval = forms.ModelChoiceField(
        queryset=IntervalSchedule.objects.all(),
        required=False,
        help_text="Back up at this interval…",
    )
    crontab = forms.ModelChoiceField(
        queryset=CrontabSchedule.objects.all(),
        required=False,
        help_text="…or at the times of this crontab (one of the two).",
    )

    class Meta:
        model = BackupSchedule
        fields = ("service", "interval", "crontab", "keep_count", "keep_days", "enabled")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            task = self.instance.periodic_task
            self.initial.setdefault("interval", task.interval_id)
            self.initial.setdefault("crontab", task.crontab_id)

    def clean(self):
        cleaned = super().clean()
        interval, crontab = cleaned.get("interval"), cleaned.get("crontab")
        if (interval is None) == (crontab is None):
            raise forms.ValidationError("Choose an interval or a crontab: one of the two.")
        self.timing = interval or crontab
        return cleaned


@admin.register(BackupSchedule)
class BackupScheduleAdmin(AuditedModelAdmin):
    """Schedules are edited here (audited) through the schedule services, which keep the
    schedule's beat entry in step; beat sends its backups at each due time."""

    form = BackupScheduleForm
    list_display = ("service", "timing", "keep_count", "keep_days", "enabled", "last_run_at")
    list_filter = ("enabled",)
    list_select_related = ("service", "periodic_task__interval", "periodic_task__crontab")

    def get_readonly_fields(self, request, obj=None):
        # A schedule's backups belong to its service: another service is another schedule.
        return ("service", "last_run_at") if obj is not None else ("last_run_at",)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        # The add / change / view links of beat's own admin beside each choice.
        for name in ("interval", "crontab"):
            field = copy.deepcopy(form.base_fields[name])
            related = self.admin_site._registry.get(field.queryset.model)
            if related is not None:
                field.widget = RelatedFieldWidgetWrapper(
                    field.widget,
                    PeriodicTask._meta.get_field(name).remote_field,
                    self.admin_site,
                    can_add_related=related.has_add_permission(request),
                    can_change_related=related.has_change_permission(request),
                    can_view_related=related.has_view_permission(request),
                )
            form.base_fields[name] = field
        return form

    @admin.display(description="Timing")
    def timing(self, obj: BackupSchedule) -> str:
        return str(obj.periodic_task.scheduler)

    def create_object(self, request, obj, form):
        return schedules.backup_schedule_create(
            actor=request.user,
            service=obj.service,
            timing=form.timing,
            keep_count=obj.keep_count,
            keep_days=obj.keep_days,
            enabled=obj.enabled,
        )

    def save_model(self, request, obj, form, change):
        if not change:
            return super().save_model(request, obj, form, change)
        schedules.backup_schedule_update(
            actor=request.user,
            schedule=obj,
            timing=form.timing,
            keep_count=obj.keep_count,
            keep_days=obj.keep_days,
            enabled=obj.enabled,
        )
        form._audit_done = True
        return None

    def delete_model(self, request, obj):
        schedules.backup_schedule_delete(actor=request.user, schedule=obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic(using=router.db_for_write(BackupSchedule)):
            for schedule in queryset.select_related("service", "periodic_task"):
                schedules.backup_schedule_delete(actor=request.user, schedule=schedule)


# --- Beat's own admin (django-celery-beat): superusers only, audited ------------------------


class BeatAuditedAdmin(AuditedModelAdmin):
    """Beat's models in the admin: what runs when is Cutover's own business."""

    def audit_state(self, obj) -> dict[str, Any]:
        # A crontab's time zone is not JSON: written as its name.
        data = {f.name: f.value_from_object(obj) for f in obj._meta.concrete_fields}
        return json.loads(json.dumps(data, cls=DjangoJSONEncoder, default=str))


class PeriodicTaskAdmin(BeatAuditedAdmin, beat_admin.PeriodicTaskAdmin):
    """Beat's entries. A backup schedule's entry is changed through its schedule, which
    keeps it in step: here it is read-only, and the bulk actions leave it alone."""

    def _is_backup_entry(self, obj) -> bool:
        return obj is not None and BackupSchedule.objects.filter(periodic_task=obj).exists()

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and not self._is_backup_entry(obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not self._is_backup_entry(obj)

    def _audited_bulk(self, request, queryset, action: str, apply) -> None:
        with transaction.atomic(using=router.db_for_write(PeriodicTask)):
            chosen = queryset.filter(backup_schedule__isnull=True).values("pk")
            before = dict(
                PeriodicTask.objects.select_for_update()
                .filter(pk__in=chosen)
                .values_list("pk", "enabled")
            )
            apply(request, PeriodicTask.objects.filter(pk__in=before))
            for task in PeriodicTask.objects.filter(pk__in=before):
                fleet.audit_record(
                    actor=request.user,
                    action=f"periodictask.{action}",
                    obj=task,
                    before={"enabled": before[task.pk]},
                    after={"enabled": task.enabled},
                )

    @admin.action(description="Enable selected tasks")
    def enable_tasks(self, request, queryset):
        self._audited_bulk(request, queryset, "enable", super().enable_tasks)

    @admin.action(description="Disable selected tasks")
    def disable_tasks(self, request, queryset):
        self._audited_bulk(request, queryset, "disable", super().disable_tasks)

    @admin.action(description="Toggle activity of selected tasks")
    def toggle_tasks(self, request, queryset):
        self._audited_bulk(request, queryset, "toggle", super().toggle_tasks)


def _beat_admins_for_superusers_only() -> None:
    """Register beat's admin pages again, restricted to superusers and audited."""
    replacements = {PeriodicTask: PeriodicTaskAdmin}
    for model in (PeriodicTask, IntervalSchedule, CrontabSchedule, SolarSchedule, ClockedSchedule):
        current = type(admin.site._registry[model])
        replacement = replacements.get(model) or type(
            current.__name__, (BeatAuditedAdmin, current), {"__module__": __name__}
        )
        admin.site.unregister(model)
        admin.site.register(model, replacement)


_beat_admins_for_superusers_only()


@admin.register(BackupRun)
class BackupRunAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "service", "state", "progress", "size_display", "created_at", "pruned_at")
    list_filter = ("state", "service")
    list_select_related = ("service",)
    changelist_defer = ("log", "manifest")
    readonly_fields = ("manifest_display",)
    actions = ("plan_restore",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Progress")
    def progress(self, obj):
        return _progress(obj)

    @admin.display(description="Size", ordering="size")
    def size_display(self, obj):
        return filesizeformat(obj.size)

    @admin.display(description="Manifest")
    def manifest_display(self, obj):
        return pretty_json(obj.manifest)

    @admin.action(description="Plan a restore to the original target (dry run)")
    def plan_restore(self, request, queryset):
        for backup in queryset.select_related("service"):
            try:
                run = restore.restore_run_start(
                    actor=request.user, backup=backup, target=None, dry_run=True
                )
            except FleetError as error:
                self.message_user(
                    request, f"Backup run {backup.pk}: {error.message}", messages.ERROR
                )
                continue
            url = reverse("admin:backups_app_restorerun_change", args=[run.pk])
            self.message_user(
                request,
                format_html(
                    'Plan for backup run {}: <a href="{}">restore run {}</a>',
                    backup.pk,
                    url,
                    run.pk,
                ),
            )


@admin.register(RestoreRun)
class RestoreRunAdmin(ReadOnlyModelAdmin):
    list_display = (
        "id",
        "service",
        "purpose",
        "backup",
        "dry_run",
        "state",
        "progress",
        "verified",
        "finished_at",
    )
    list_filter = ("purpose", "state", "verified", "service")
    list_select_related = ("service",)
    changelist_defer = ("log", "plan", "verify")
    readonly_fields = ("plan_display", "verify_display")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Progress")
    def progress(self, obj):
        return _progress(obj)

    @admin.display(description="Plan")
    def plan_display(self, obj):
        return pretty_json(obj.plan)

    @admin.display(description="Verify report")
    def verify_display(self, obj):
        return pretty_json(obj.verify)
