"""Admin for accounts: dedupe runs (plan → confirm → job; undo), the dedupe journal, legacy
identities, quota runs, and the fleet's quotas and memberships.

Dedupe and quota jobs act on the whole fleet (the duplicate finder sees every account),
so these pages are for superusers only. Starting a dedupe shows the plan first; the
confirmation carries the plan's digest and is refused if the duplicates changed since.
Journal entries hold whole rows (for an exact undo); the admin masks every credential in
them (password hashes, API token keys, secret digests).
"""

import re
from typing import Any

from django.apps import apps
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from fleet_app.admin import ReadOnlyModelAdmin, confirm_first, pretty_json
from fleet_app.errors import FleetError

from . import quotas, selectors, services
from .models import DedupeJournal, DedupeReview, DedupeRun, LegacyAccount, LegacyRole, QuotaRun

# How many groups the plan page lists; the confirmation covers all of them (digest).
PLAN_PAGE_GROUPS = 500
_MASKED = ("password", "token", "key", "secret", "digest")


def _masked_name(name: str) -> bool:
    return any(marker in name for marker in _MASKED)


def _pk_is_secret(label: str | None) -> bool:
    if not label:
        return False
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return False
    return _masked_name(model._meta.pk.name)


def mask_credentials(value: Any, label: str | None = None) -> Any:
    """A copy of journal/checkpoint data with every credential replaced by ``***``."""
    if isinstance(value, list):
        return [mask_credentials(item, label) for item in value]
    if not isinstance(value, dict):
        return value
    label = value.get("model", label)
    secret_pk = _pk_is_secret(label)
    masked = {}
    for key, item in value.items():
        secret_value = (key in ("old", "new") and _masked_name(str(value.get("field", "")))) or (
            key != "model" and _masked_name(key) and item
        )
        if key in ("pk", "pks") and secret_pk:
            masked[key] = "***" if key == "pk" else ["***"] * len(item)
        elif secret_value:
            masked[key] = "***"
        else:
            masked[key] = mask_credentials(item, label)
    return masked


def _progress(obj) -> str:
    percent = obj.percent
    return format_html(
        '<progress value="{}" max="100" class="run-progress">{}%</progress> {}/{}',
        percent,
        percent,
        obj.done,
        obj.total,
    )


# --- Dedupe runs ----------------------------------------------------------------------------


def _ids(text: str) -> list[int]:
    return [int(part) for part in re.split(r"[\s,;]+", text or "") if part.isdigit()]


@admin.register(DedupeRun)
class DedupeRunAdmin(ReadOnlyModelAdmin):
    change_list_template = "admin/migrations_app/deduperun/change_list.html"
    list_display = (
        "id",
        "kind",
        "state",
        "phase",
        "groups_found",
        "merged",
        "failed",
        "delete_duplicates",
        "created_by",
        "created_at",
        "finished_at",
        "undone_at",
    )
    list_filter = ("kind", "state")
    list_select_related = ("created_by",)
    ordering = ("-created_at", "-id")
    changelist_defer = ("plan", "log", "prefer")
    fieldsets = (
        (None, {"fields": ("kind", "state", "phase", "progress", "groups_found", "merged")}),
        ("Counts", {"fields": ("failed", "failures")}),
        ("Options", {"fields": ("delete_duplicates", "prefer", "force", "undo_of", "undone_at")}),
        ("Who and when", {"fields": ("created_by", "created_at", "started_at", "finished_at")}),
        ("Plan", {"fields": ("plan_text", "journal_link")}),
        ("Error and log", {"fields": ("error", "log_text")}),
    )
    readonly_fields = (
        "progress",
        "groups_found",
        "merged",
        "failures",
        "plan_text",
        "journal_link",
        "log_text",
    )
    actions = ("undo",)

    @admin.display(description="groups found", ordering="total")
    def groups_found(self, obj: DedupeRun) -> int:
        return obj.groups_found

    @admin.display(description="merged (restored)", ordering="done")
    def merged(self, obj: DedupeRun) -> int:
        return obj.groups_merged

    @admin.display(description="progress")
    def progress(self, obj: DedupeRun) -> str:
        return _progress(obj)

    @admin.display(description="failed groups")
    def failures(self, obj: DedupeRun) -> str:
        failed = selectors.dedupe_failures(obj)
        if not failed:
            return "-"
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{}: {}</li>", failed[:200]))

    @admin.display(description="plan")
    def plan_text(self, obj: DedupeRun) -> str:
        return pretty_json(obj.plan[:PLAN_PAGE_GROUPS])

    @admin.display(description="journal")
    def journal_link(self, obj: DedupeRun) -> str:
        target = obj.undo_of_id if obj.kind == DedupeRun.Kind.UNDO else obj.pk
        url = reverse("admin:migrations_app_dedupejournal_changelist")
        return format_html('<a href="{}?run__id__exact={}">Journal entries</a>', url, target)

    @admin.display(description="log")
    def log_text(self, obj: DedupeRun) -> str:
        return format_html('<pre class="run-text">{}</pre>', obj.log) if obj.log else "-"

    def has_undo_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    @admin.action(permissions=["undo"], description="Undo selected merge runs (restore exactly)")
    @confirm_first(
        verb="Undo",
        consequence="Each merge of these runs is reversed from its journal: the merged "
        "accounts come back as they were and what moved to the survivors moves back.",
        affected=lambda qs: qs.filter(undone_at=None).exclude(kind=DedupeRun.Kind.UNDO),
        skipped_why="undo runs, or already undone",
        name=lambda run: (
            f"run {run.pk}: {run.groups_merged} group(s) merged on {run.created_at:%Y-%m-%d %H:%M}"
        ),
    )
    def undo(self, request, queryset):
        for run in queryset.order_by("-pk"):
            try:
                undo = services.dedupe_undo_start(actor=request.user, run=run)
            except FleetError as error:
                self.message_user(request, f"Run {run.pk}: {error.message}", messages.ERROR)
                continue
            self.message_user(
                request,
                format_html(
                    "Undo run {} started for run {} ({} group(s)). {}",
                    undo.pk,
                    run.pk,
                    undo.total,
                    _link("admin:migrations_app_deduperun_change", undo.pk, "Follow it"),
                ),
                messages.SUCCESS,
            )

    def get_urls(self):
        return [
            path(
                "plan/",
                self.admin_site.admin_view(self.plan_view),
                name="migrations_app_deduperun_plan",
            ),
            *super().get_urls(),
        ]

    def plan_view(self, request: HttpRequest):
        """GET shows the duplicate groups and the plan; POST with the plan's digest starts
        the job for exactly that plan."""
        if not self.has_undo_permission(request):
            raise PermissionDenied
        data = request.POST if request.method == "POST" else request.GET
        prefer_text = data.get("prefer", "")
        prefer, delete = _ids(prefer_text), bool(data.get("delete"))
        error = ""
        try:
            groups = selectors.dedupe_plan(selectors.duplicates_find(), prefer=prefer)
        except FleetError as failure:
            groups, error = [], failure.message
        plan = selectors.plan_json(groups)
        digest = selectors.plan_digest(plan)
        if request.method == "POST" and not error:
            if data.get("digest") != digest:
                error = "The duplicates changed since the plan was shown: review this plan."
            elif not plan:
                error = "There is nothing to merge."
            else:
                try:
                    run = services.dedupe_run_start(
                        actor=request.user, plan=plan, delete=delete, prefer=prefer
                    )
                except FleetError as failure:
                    error = failure.message
                else:
                    self.message_user(
                        request,
                        f"Dedupe run {run.pk} started: {run.total} group(s) to merge.",
                        messages.SUCCESS,
                    )
                    return HttpResponseRedirect(
                        reverse("admin:migrations_app_deduperun_change", args=[run.pk])
                    )
        context = {
            **self.admin_site.each_context(request),
            "title": "Dedupe accounts: review the plan",
            "opts": self.opts,
            "groups": groups[:PLAN_PAGE_GROUPS],
            "group_count": len(groups),
            "account_count": sum(len(g.accounts) for g in groups),
            "more": max(0, len(groups) - PLAN_PAGE_GROUPS),
            "digest": digest,
            "prefer": prefer_text,
            "delete": delete,
            "error": error,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/migrations_app/deduperun/plan.html", context)


def _link(viewname: str, pk: Any, text: Any) -> str:
    return format_html('<a href="{}">{}</a>', reverse(viewname, args=[pk]), text)


@admin.register(DedupeJournal)
class DedupeJournalAdmin(ReadOnlyModelAdmin):
    list_display = (
        "run",
        "position",
        "email_key",
        "survivor_id",
        "merged_ids",
        "state",
        "created_at",
        "undone_at",
    )
    list_filter = ("state",)
    search_fields = ("=email_key",)
    ordering = ("-run_id", "position")
    changelist_defer = ("changes",)
    fields = (
        "run",
        "position",
        "email_key",
        "survivor_id",
        "merged_ids",
        "state",
        "error",
        "created_at",
        "undone_at",
        "changes_masked",
    )
    readonly_fields = ("changes_masked",)

    @admin.display(description="changes (credentials masked)")
    def changes_masked(self, obj: DedupeJournal) -> str:
        return pretty_json(mask_credentials(obj.changes))


@admin.register(DedupeReview)
class DedupeReviewAdmin(ReadOnlyModelAdmin):
    """Groups only one rule calls duplicates: merged by the next dedupe run once approved,
    left as they are when kept apart. Nothing else changes them."""

    list_display = ("id", "emails_text", "rule", "reason", "state", "decided_by", "decided_at")
    list_filter = ("state", "rule", "reason")
    search_fields = ("emails",)
    ordering = ("-created_at", "-id")
    fields = (
        "emails_text",
        "accounts",
        "rule",
        "reason",
        "state",
        "survivor_id",
        "created_at",
        "decided_by",
        "decided_at",
    )
    readonly_fields = ("emails_text",)
    actions = ("approve_merge", "keep_apart")

    @admin.display(description="e-mails")
    def emails_text(self, obj: DedupeReview) -> str:
        return ", ".join(obj.emails)

    def _decide(self, request, queryset, *, approve: bool) -> None:
        done = 0
        for review in queryset.order_by("pk"):
            try:
                services.dedupe_review_decide(review=review, actor=request.user, approve=approve)
            except FleetError as error:
                self.message_user(request, f"Review {review.pk}: {error.message}", messages.ERROR)
                continue
            done += 1
        verb = "approved for the next dedupe run" if approve else "kept apart"
        self.message_user(request, f"{done} group(s) {verb}.", messages.SUCCESS)

    @admin.action(description="Approve the merge of the selected groups (next dedupe run)")
    def approve_merge(self, request, queryset):
        self._decide(request, queryset, approve=True)

    @admin.action(description="Keep the selected groups' accounts apart")
    def keep_apart(self, request, queryset):
        self._decide(request, queryset, approve=False)


@admin.register(LegacyAccount)
class LegacyAccountAdmin(ReadOnlyModelAdmin):
    list_display = (
        "legacy_id",
        "uuid",
        "user",
        "was_active",
        "email_verified",
        "flagged_duplicate",
        "vms",
        "networks",
        "files",
        "imported_at",
    )
    list_filter = ("flagged_duplicate", "was_active")
    list_select_related = ("user",)
    search_fields = ("=legacy_id", "user__email")
    ordering = ("-imported_at", "-id")


@admin.register(LegacyRole)
class LegacyRoleAdmin(ReadOnlyModelAdmin):
    list_display = ("user", "organization", "role", "legacy_id")
    list_select_related = ("user", "organization")
    search_fields = ("=legacy_id", "user__email", "role")
    ordering = ("user_id", "organization_id", "id")


# --- Quotas -----------------------------------------------------------------------------


@admin.register(QuotaRun)
class QuotaRunAdmin(ReadOnlyModelAdmin):
    change_list_template = "admin/migrations_app/quotarun/change_list.html"
    list_display = ("id", "mode", "state", "differing", "done", "created_by", "created_at")
    list_filter = ("mode", "state")
    list_select_related = ("created_by",)
    ordering = ("-created_at", "-id")
    changelist_defer = ("result", "log")
    fields = (
        "mode",
        "state",
        "phase",
        "differing",
        "done",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
        "error",
        "result_text",
    )
    readonly_fields = ("differing", "result_text")

    @admin.display(description="differing usages")
    def differing(self, obj: QuotaRun) -> Any:
        return (obj.result or {}).get("differing", "-")

    @admin.display(description="result")
    def result_text(self, obj: QuotaRun) -> str:
        return pretty_json(obj.result)

    def get_urls(self):
        return [
            path(
                "start/",
                self.admin_site.admin_view(require_POST(self.start_view)),
                name="migrations_app_quotarun_start",
            ),
            *super().get_urls(),
        ]

    def start_view(self, request: HttpRequest):
        if not (request.user.is_active and request.user.is_superuser):
            raise PermissionDenied
        try:
            run = quotas.quota_run_start(actor=request.user, mode=request.POST.get("mode", ""))
        except FleetError as error:
            self.message_user(request, error.message, messages.ERROR)
            return HttpResponseRedirect(reverse("admin:migrations_app_quotarun_changelist"))
        self.message_user(request, f"Quota run {run.pk} ({run.mode}) started.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:migrations_app_quotarun_change", args=[run.pk]))
