"""Admin for ZFS: hosts, policies, datasets and jobs are edited through audited forms;
runs and divergence reports are history, changed only by the actions below.

- Previews (a dataset's snapshot plan, a job's replication plan) list the hosts read-only
  and show exactly what would be created, destroyed or sent, and the commands, before
  anything runs.
- A divergence fix runs only after a staff user with change permission on divergence
  reports approves it explicitly; the approval is audited and the fix runs in a worker.
"""

from django.contrib import admin, messages
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from fleet_app.admin import (
    AuditedModelAdmin,
    ReadOnlyModelAdmin,
    confirm_first,
    pretty_json,
)
from fleet_app.errors import FleetError

from . import holds, hosts, services
from .models import (
    Dataset,
    DivergenceReport,
    ReplicatedDataset,
    ReplicationJob,
    ReplicationRun,
    SnapshotPolicy,
    SnapshotRun,
    StorageHost,
)
from .runner import ZfsCommandError


def _perm(request: HttpRequest, model: type, action: str) -> bool:
    opts = model._meta
    return request.user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}")


def _link(viewname: str, pk, text) -> str:
    return format_html('<a href="{}">{}</a>', reverse(viewname, args=[pk]), text)


@admin.register(StorageHost)
class StorageHostAdmin(AuditedModelAdmin):
    list_display = ("name", "address", "port", "user", "local", "checked_at")
    search_fields = ("name", "address")
    readonly_fields = ("capabilities_json", "checked_at")
    actions = ("check_capabilities",)

    def get_readonly_fields(self, request, obj=None):
        # Locality follows the name (ZFS_LOCAL_HOSTS): renaming a host must not move where
        # its commands run, so a name is set once.
        fields = super().get_readonly_fields(request, obj)
        return (*fields, "name") if obj is not None else fields

    @admin.display(boolean=True, description="Local (ZFS_LOCAL_HOSTS)")
    def local(self, obj):
        return obj.is_local

    @admin.display(description="Capabilities")
    def capabilities_json(self, obj):
        return pretty_json(obj.capabilities)

    @admin.action(description="Detect pools and the operator's permissions")
    def check_capabilities(self, request, queryset):
        for host in queryset:
            hosts.storage_host_check_enqueue(host=host)
        self.message_user(request, f"Checking {queryset.count()} host(s) in the background.")


@admin.register(SnapshotPolicy)
class SnapshotPolicyAdmin(AuditedModelAdmin):
    list_display = (
        "name",
        "frequently",
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "yearly",
        "autosnap",
        "autoprune",
        "monitor_only",
    )


@admin.register(Dataset)
class DatasetAdmin(AuditedModelAdmin):
    list_display = ("__str__", "policy", "newest_snapshot", "newest_snapshot_at", "snapshot_count")
    list_filter = ("host", "policy")
    search_fields = ("name",)
    list_select_related = ("host", "policy")
    actions = ("preview_snapshots", "run_snapshot_job", "release_holds")

    @admin.action(description="List holds (who, why) and release abandoned ones")
    def release_holds(self, request, queryset):
        datasets = {d.pk: d for d in queryset.select_related("host")[:20]}
        if request.POST.get("post") == "yes":
            for value in request.POST.getlist("hold"):
                pk, snapshot, tag = (value.split("|") + ["", ""])[:3]
                dataset = datasets.get(int(pk)) if pk.isdigit() else None
                try:
                    if dataset is None:
                        raise FleetError(f"{value!r} is not a hold of the selected datasets.")
                    done = holds.hold_release(
                        dataset=dataset, snapshot=snapshot, tag=tag, actor=request.user
                    )
                    self.message_user(request, f"{dataset}: {done}")
                except (ZfsCommandError, FleetError) as exc:
                    self.message_user(request, getattr(exc, "message", str(exc)), messages.ERROR)
            return None
        rows = []
        for dataset in datasets.values():
            try:
                rows.append({"dataset": dataset, "holds": holds.dataset_holds(dataset=dataset)})
            except (ZfsCommandError, FleetError) as exc:
                rows.append({"dataset": dataset, "holds": [], "error": str(exc)})
        context = {**self.admin_site.each_context(request), "title": "Holds", "rows": rows}
        return TemplateResponse(request, "backups_app/zfs_holds.html", context)

    @admin.action(description="Preview the snapshot plan (reads only)")
    def preview_snapshots(self, request, queryset):
        previews = []
        for dataset in queryset.select_related("host", "policy")[:20]:
            try:
                plan = hosts.snapshot_plan_preview(dataset=dataset)
                previews.append({"dataset": dataset, "plan": plan, "error": ""})
            except (ZfsCommandError, FleetError) as exc:
                previews.append({"dataset": dataset, "plan": None, "error": str(exc)})
        return TemplateResponse(
            request,
            "backups_app/zfs_plan_preview.html",
            {
                **self.admin_site.each_context(request),
                "title": "Snapshot plan preview",
                "snapshots": previews,
                "replications": [],
            },
        )

    @admin.action(description="Run the snapshot job now")
    def run_snapshot_job(self, request, queryset):
        for dataset in queryset.filter(policy__isnull=False):
            try:
                run = services.snapshot_run_start(dataset=dataset, actor=request.user)
                self.message_user(request, f"Snapshot run {run.pk} started on {dataset}.")
            except FleetError as exc:
                self.message_user(request, exc.message, messages.WARNING)


@admin.register(ReplicationJob)
class ReplicationJobAdmin(AuditedModelAdmin):
    list_display = (
        "name",
        "source",
        "target",
        "enabled",
        "guarantee",
        "last_success_at",
        "refused",
    )
    list_filter = ("enabled", "guarantee")
    list_select_related = ("source__host", "target__host")
    readonly_fields = (
        "guarantee",
        "refusal",
        "assessed_at",
        "last_success_at",
        "last_snapshot",
        "last_snapshot_at",
    )
    actions = ("run_now", "preview_replication", "assess")

    @admin.display(boolean=True)
    def refused(self, obj):
        return bool(obj.refusal)

    @admin.action(description="Replicate now")
    def run_now(self, request, queryset):
        for job in queryset.select_related("source"):
            try:
                run = services.replication_run_start(job=job, actor=request.user)
                self.message_user(
                    request,
                    format_html(
                        "{} started for {}.",
                        _link("admin:backups_app_replicationrun_change", run.pk, f"Run {run.pk}"),
                        job,
                    ),
                )
            except FleetError as exc:
                self.message_user(request, exc.message, messages.WARNING)

    @admin.action(description="Preview the replication plan (reads only)")
    def preview_replication(self, request, queryset):
        previews = []
        for job in queryset.select_related("source__host", "target__host")[:20]:
            try:
                preview = hosts.replication_plan_preview(job=job)
                plan = preview.plan
                steps = [
                    {
                        "step": step,
                        "commands": [" ".join(["zfs", *send]), " ".join(["zfs", *receive])],
                    }
                    for step, send, receive in preview.steps
                ]
                previews.append({"job": job, "plan": plan, "steps": steps, "error": ""})
            except ZfsCommandError as exc:
                previews.append({"job": job, "plan": None, "steps": [], "error": str(exc)})
        return TemplateResponse(
            request,
            "backups_app/zfs_plan_preview.html",
            {
                **self.admin_site.each_context(request),
                "title": "Replication plan preview",
                "snapshots": [],
                "replications": previews,
            },
        )

    @admin.action(description="Detect capabilities and the guarantee")
    def assess(self, request, queryset):
        for job in queryset:
            hosts.replication_job_assess_enqueue(job=job)
        self.message_user(request, f"Assessing {queryset.count()} job(s) in the background.")


@admin.register(ReplicationRun)
class ReplicationRunAdmin(ReadOnlyModelAdmin):
    list_display = (
        "id",
        "job",
        "source_dataset",
        "state",
        "phase",
        "plan_kind",
        "from_snapshot",
        "to_snapshot",
        "bytes",
        "duration_seconds",
        "created_at",
    )
    list_filter = ("state", "plan_kind")
    list_select_related = ("job",)
    changelist_defer = ("log",)


@admin.register(SnapshotRun)
class SnapshotRunAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "dataset", "state", "phase", "done", "failed", "created_at")
    list_filter = ("state",)
    list_select_related = ("dataset__host",)


@admin.register(ReplicatedDataset)
class ReplicatedDatasetAdmin(ReadOnlyModelAdmin):
    """Each dataset of each job (a recursive job's children too): state, lag, bytes."""

    list_display = (
        "job",
        "source_dataset",
        "target_dataset",
        "state",
        "last_snapshot",
        "source_newest",
        "last_bytes",
        "total_bytes",
        "last_success_at",
    )
    list_filter = ("state",)
    list_select_related = ("job",)
    search_fields = ("source_dataset", "target_dataset")


_FIX_CONSEQUENCE = (
    "Approving runs the fix in a worker at once, on the storage hosts: the commands below "
    "change the target datasets (a rollback or a resend destroys what only the target has)."
)


def _offering(fix: str):
    def affected(queryset):
        open_reports = queryset.filter(status=DivergenceReport.Status.OPEN)
        offering = [
            pk
            for pk, fixes in open_reports.values_list("pk", "fixes")
            if any(f.get("kind") == fix for f in fixes)
        ]
        return open_reports.filter(pk__in=offering).select_related("job")

    return affected


def _report_name(report: DivergenceReport) -> str:
    return f"report {report.pk}: {report.job} — {report.source_dataset} ({report.kind})"


def _fix_lines(fix: str):
    def lines(report: DivergenceReport) -> list[str]:
        found = report.fix(fix) or {}
        return [found.get("describe", fix), *found.get("commands", [])]

    return lines


def _fix_action(fix: str, *, verb: str, description: str):
    """The admin action that approves one divergence fix, asking first (what each selected
    report's fix will run is listed on the confirmation page)."""

    @admin.action(permissions=["approve"], description=description)
    @confirm_first(
        verb=verb,
        consequence=_FIX_CONSEQUENCE,
        affected=_offering(fix),
        skipped_why="not open, or this fix is not offered for them",
        name=_report_name,
        details=_fix_lines(fix),
    )
    def approve(self, request, queryset):
        self._approve(request, queryset, fix)

    approve.__name__ = f"approve_{fix}"
    return approve


@admin.register(DivergenceReport)
class DivergenceReportAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "job", "source_dataset", "kind", "status", "reason", "created_at")
    list_filter = ("status", "kind")
    list_select_related = ("job",)
    readonly_fields = (
        "job",
        "run",
        "source_dataset",
        "target_dataset",
        "kind",
        "reason",
        "last_common",
        "source_only",
        "target_only",
        "name_clashes",
        "source_moved_to",
        "fixes_offered",
        "status",
        "approved_fix",
        "approved_by",
        "approved_at",
        "outcome",
        "created_at",
        "closed_at",
    )
    exclude = ("fixes",)
    actions = (
        "approve_rollback",
        "approve_rename_aside",
        "approve_retarget",
        "approve_rename_back",
        "approve_resend_full",
        "approve_resume_from_common",
        "approve_children_then_parent",
        "dismiss",
    )

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return _perm(request, DivergenceReport, "change")

    @admin.display(description="Fixes offered (each runs only once approved)")
    def fixes_offered(self, obj):
        return format_html_join(
            "",
            "<p><strong>{}</strong>: {}<br><code>{}</code></p>",
            (
                (f["kind"], f["describe"], "; ".join(f.get("commands", [])) or "(job change only)")
                for f in obj.fixes
            ),
        )

    def _approve(self, request, queryset, fix: str):
        for report in queryset:
            try:
                services.divergence_approve(report=report, fix=fix, actor=request.user)
                self.message_user(request, f"Report {report.pk}: '{fix}' approved, running.")
            except FleetError as exc:
                self.message_user(request, f"Report {report.pk}: {exc.message}", messages.ERROR)

    approve_rollback = _fix_action(
        "rollback",
        verb="Roll back the target of",
        description="Approve: roll the target back to the last common snapshot",
    )

    approve_rename_aside = _fix_action(
        "rename_aside",
        verb="Rename aside and resend for",
        description="Approve: rename the target aside and resend in full",
    )

    approve_retarget = _fix_action(
        "retarget",
        verb="Retarget",
        description="Approve: follow the source to its new name",
    )

    approve_rename_back = _fix_action(
        "rename_back",
        verb="Move back the target of",
        description="Approve: move the moved target back (this dataset)",
    )

    approve_resend_full = _fix_action(
        "resend_full",
        verb="Resend in full for",
        description="Approve: send this dataset in full to its target",
    )

    approve_resume_from_common = _fix_action(
        "resume_from_common",
        verb="Resume from the common snapshot for",
        description="Approve: go on from the rolled-back target",
    )

    approve_children_then_parent = _fix_action(
        "children_then_parent",
        verb="Send the parent alone, then rename, for",
        description="Approve: send the parent alone, move its children under it, then rename",
    )

    @admin.action(permissions=["approve"], description="Dismiss (change nothing)")
    def dismiss(self, request, queryset):
        for report in queryset:
            try:
                services.divergence_dismiss(report=report, actor=request.user)
            except FleetError as exc:
                self.message_user(request, f"Report {report.pk}: {exc.message}", messages.ERROR)
