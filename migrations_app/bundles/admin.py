"""Admin for bundles: start an export and download it as one file; upload a bundle, read
its plan and approve it; saved selections; the trusted keys.

An export or an import is a run row worked by a Celery worker; these pages only start
runs and read rows. A bundle downloads as one tar file streamed from the export folder
(``format.bundle_file_stream``): nothing is packed on disk first.
"""

import uuid
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect, StreamingHttpResponse
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path as url_path
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from fleet_app.admin import FleetModelAdmin, ReadOnlyModelAdmin, form_action, pretty_json

from . import importing, services, stream_pull
from .format import bundle_file_stream
from .kinds import BY_NAME
from .models import BundleExport, BundleImport, BundleRowState, BundleSelection, TrustedBundleKey
from .stream_source import FORMAT, stream_file

PLATFORM_KINDS = [name for name, kind in BY_NAME.items() if kind.platform]


class ExportForm(forms.Form):
    organizations = forms.CharField(
        required=False, help_text="Organization slugs, separated by spaces or commas."
    )
    selection = forms.ModelChoiceField(BundleSelection.objects.all(), required=False)
    kinds = forms.MultipleChoiceField(
        choices=[(name, name) for name in BY_NAME],
        required=False,
        help_text="None: all but the platform's (service backups, replication jobs).",
    )
    since = forms.CharField(required=False, help_text="Export id or date: incremental.")
    format = forms.ChoiceField(choices=[("tar", "tar"), ("dir", "dir")])
    chunk_size = forms.CharField(required=False, help_text="e.g. 4GB (tar only).")
    compress = forms.BooleanField(required=False, help_text="zstd the row sections.")


def _render(admin_obj, request, form, title, submit, error="", link=None):
    context = {
        "link": link,
        **admin_obj.admin_site.each_context(request),
        "title": title,
        "opts": admin_obj.opts,
        "form": form,
        "submit": submit,
        "error": error,
    }
    return TemplateResponse(request, "admin/migrations_app/bundle_form.html", context)


def _progress(obj) -> str:
    if obj.finished_at and obj.started_at:
        seconds = (obj.finished_at - obj.started_at).total_seconds()
        return format_html("finished in {} s", f"{seconds:.1f}")
    return format_html("{} · {} / {}", obj.phase or obj.state, obj.done, obj.total or "?")


VERDICTS = ("create", "update", "delete", "conflict", "unchanged", "mapped")
# Kinds whose keys are hashes: an example would tell staff nothing.
OPAQUE_KEYS = {"audit"}


def _examples(kind: str, found: dict[str, list[str]]) -> str:
    if kind in OPAQUE_KEYS:
        return ""
    return format_html_join(
        mark_safe("<br>"),  # noqa: S308 - a constant
        "{}: {}",
        (
            (verdict, format_html_join(" ", "<code>{}</code>", ((key,) for key in keys)))
            for verdict, keys in found.items()
            if keys
        ),
    )


def _plan_table(plan: dict) -> str:
    """The plan as staff read it before approving: per kind, what each verdict counts, with
    examples of what changes; then the blobs to place against the free disk."""
    if not plan:
        return "Not planned yet: the worker verifies the bundle first."
    if plan.get("refused"):
        return format_html('<p class="errornote">Refused: {}</p>', plan["refused"])
    examples = plan.get("examples", {})
    kinds = plan.get("kinds", {})
    # In the order they are applied (the plan's JSON keeps no order).
    order = [name for name in BY_NAME if name in kinds] + sorted(set(kinds) - set(BY_NAME))
    rows = format_html_join(
        "",
        '<tr data-kind="{}"><th scope="row">{}</th>{}<td class="examples">{}</td></tr>',
        (
            (
                kind,
                kind.replace("_", " "),
                format_html_join(
                    "",
                    '<td class="{}{}">{}</td>',
                    (
                        (v, "" if kinds[kind].get(v) else " zero", kinds[kind].get(v, 0))
                        for v in VERDICTS
                    ),
                ),
                _examples(kind, examples.get(kind, {})),
            )
            for kind in order
        ),
    )
    head = format_html_join("", '<th scope="col">{}</th>', ((v,) for v in VERDICTS))
    blobs = plan.get("blobs", {})
    secrets = plan.get("needs_fresh_secrets") or []
    return format_html(
        '<table id="bundle-plan"><thead><tr><th scope="col">kind</th>{}'
        '<th scope="col">examples</th></tr></thead><tbody>{}</tbody></table>'
        '<p id="bundle-plan-blobs">Blobs: {} to place of {} in the bundle; {} needed, {} free.'
        "</p>{}",
        head,
        rows,
        blobs.get("to_place", 0),
        blobs.get("in_bundle", 0),
        filesizeformat(blobs.get("bytes_needed", 0)),
        filesizeformat(blobs.get("bytes_free", 0)),
        format_html(
            '<p id="bundle-plan-secrets">{} systems need fresh secrets: {}</p>',
            len(secrets),
            ", ".join(secrets[:20]),
        )
        if secrets
        else "",
    )


@admin.register(BundleExport)
class BundleExportAdmin(ReadOnlyModelAdmin):
    list_display = (
        "sequence", "state", "organizations", "incremental", "rows", "bytes", "created_at"
    )  # fmt: skip
    readonly_fields = ("state", "progress", "manifest_sha256", "scope_json", "output", "rows",
                       "size", "error", "log")  # fmt: skip
    fields = readonly_fields
    actions = ["download", "credentials", "platform"]

    @admin.display(description="Progress")
    def progress(self, obj: BundleExport) -> str:
        return _progress(obj)

    @admin.display(description="Size")
    def size(self, obj: BundleExport) -> str:
        return f"{filesizeformat(obj.bytes)} ({obj.bytes} bytes)"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._table(request, "a")

    @admin.display(description="Organizations")
    def organizations(self, obj: BundleExport) -> str:
        return ", ".join(obj.scope.get("organizations", []))

    @admin.display(description="Incremental", boolean=True)
    def incremental(self, obj: BundleExport) -> bool:
        return obj.base_id is not None

    @admin.display(description="Selection")
    def scope_json(self, obj: BundleExport) -> str:
        return pretty_json({k: v for k, v in obj.scope.items() if k != "have"})

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ExportForm(request.POST or None)
        error = ""
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                run = services.bundle_export_create(
                    actor=request.user,
                    organizations=data["organizations"].replace(",", " ").split(),
                    selection=data["selection"].name if data["selection"] else None,
                    kinds=list(data["kinds"]),
                    since=data["since"] or None,
                    fmt=data["format"],
                    chunk_size=services.size_parse(data["chunk_size"]),
                    compress=data["compress"],
                    enqueue=True,
                )
            except services.BundleRefused as refusal:
                error = str(refusal)
            else:
                self.message_user(request, f"Export {run.sequence} started.", messages.SUCCESS)
                return HttpResponseRedirect(
                    reverse("admin:migrations_app_bundleexport_change", args=[run.pk])
                )
        return _render(self, request, form, "Export a bundle", "Start the export", error)

    @form_action(description="Download the bundle as one file")
    def download(self, request, queryset):
        run = queryset.filter(state="succeeded").first()
        if run is None or not run.output or not Path(run.output).is_dir():
            self.message_user(request, "This export has no bundle to download.", messages.ERROR)
            return None
        from fleet_app import services as fleet

        fleet.audit_record(
            actor=request.user,
            action="bundle.download",
            obj=run,
            after={"manifest_sha256": run.manifest_sha256},
        )
        folder = Path(run.output)
        # A streamed export keeps no chunks: they are produced again, as for a pull.
        stream = stream_file(folder) if run.format == FORMAT else bundle_file_stream(folder)
        response = StreamingHttpResponse(stream, content_type="application/x-tar")
        response["Content-Disposition"] = f'attachment; filename="bundle-{run.sequence}.tar"'
        return response

    @form_action(description="Export again, carrying credential digests")
    def credentials(self, request, queryset):
        for run in queryset:
            try:
                again = services.bundle_export_create(
                    actor=request.user,
                    organizations=run.scope["organizations"],
                    kinds=run.scope["kinds"],
                    fmt=run.format,
                    chunk_size=run.chunk_size,
                    compress=run.compress,
                    credentials=True,
                    inventories=run.scope.get("inventories", "latest"),
                    enqueue=True,
                )
            except services.BundleRefused as refusal:
                self.message_user(request, str(refusal), messages.ERROR)
            else:
                self.message_user(request, f"Export {again.sequence} started.", messages.SUCCESS)

    @form_action(description="Export again, with the platform's service backups and ZFS jobs")
    def platform(self, request, queryset):
        for run in queryset:
            try:
                again = services.bundle_export_create(
                    actor=request.user,
                    organizations=run.scope["organizations"],
                    kinds=[*run.scope["kinds"], *PLATFORM_KINDS],
                    fmt=run.format,
                    chunk_size=run.chunk_size,
                    compress=run.compress,
                    credentials=run.scope.get("credentials", False),
                    inventories=run.scope.get("inventories", "latest"),
                    enqueue=True,
                )
            except services.BundleRefused as refusal:
                self.message_user(request, str(refusal), messages.ERROR)
            else:
                self.message_user(request, f"Export {again.sequence} started.", messages.SUCCESS)


class UploadForm(forms.Form):
    bundle = forms.FileField(help_text="A bundle as one .tar file (what an export downloads).")
    map_org = forms.CharField(
        label="Map organizations",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 40}),
        help_text="BUNDLE=HERE slug pairs, separated by spaces or lines: the bundle's "
        "organization BUNDLE is this instance's HERE (e.g. its top organization's parent).",
    )
    on_conflict = forms.ChoiceField(choices=[(p, p) for p in importing.CONFLICT_POLICIES])


class PullForm(forms.Form):
    url = forms.CharField(label="Source", help_text="The other instance's https:// address.")
    token = forms.CharField(
        widget=forms.PasswordInput, help_text="A staff API token of an account there."
    )
    organizations = forms.CharField(
        required=False, help_text="Slugs there, separated by spaces (none: all it reaches)."
    )
    selection = forms.CharField(required=False, help_text="A saved selection there.")
    kinds = forms.MultipleChoiceField(
        choices=[(name, name) for name in BY_NAME], required=False, help_text="None: all."
    )
    since = forms.CharField(required=False, help_text="Its export id or a date: incremental.")
    map_org = forms.CharField(required=False, help_text="SOURCE=TARGET pairs, one per line.")
    on_conflict = forms.ChoiceField(choices=[(p, p) for p in importing.CONFLICT_POLICIES])


@admin.register(BundleImport)
class BundleImportAdmin(ReadOnlyModelAdmin):
    list_display = ("pk", "state", "bundle_id", "signer", "sequence", "progress", "applied_at")
    readonly_fields = ("stage", "state", "progress", "error", "bundle_id", "signer", "sequence",
                       "manifest_sha256", "remote_url", "bytes_fetched", "bytes_total",
                       "plan_summary", "approved_at", "applied_at", "written")  # fmt: skip
    fields = readonly_fields
    actions = ["approve"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._table(request, "a")

    @admin.display(description="Progress")
    def progress(self, obj: BundleImport) -> str:
        return _progress(obj)

    @admin.display(description="Stage")
    def stage(self, obj: BundleImport) -> str:
        """Where the import stands, in the words of what staff do next."""
        if obj.plan.get("refused"):
            return "Refused: nothing was written."
        if obj.applied_at:
            return "Applied."
        if obj.approved_at:
            return "Approved: being applied by a worker."
        if obj.plan and obj.state == "succeeded":
            return "Planned, nothing written yet: read the plan, then approve it (Action)."
        return "Being verified and planned by a worker."

    @admin.display(description="Plan")
    def plan_summary(self, obj: BundleImport) -> str:
        return _plan_table(obj.plan)

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = UploadForm(request.POST or None, request.FILES or None)
        error = ""
        if request.method == "POST" and form.is_valid():
            folder = Path(settings.BUNDLE_UPLOAD_ROOT)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{uuid.uuid4().hex}.tar"
            with open(path, "wb") as handle:
                for piece in form.cleaned_data["bundle"].chunks():
                    handle.write(piece)
            try:
                run = importing.bundle_import_create(
                    actor=request.user,
                    path=str(path),
                    org_map=importing.org_map_parse(form.cleaned_data["map_org"].split()),
                    on_conflict=form.cleaned_data["on_conflict"],
                    enqueue=True,
                )
            except services.BundleRefused as refusal:
                path.unlink(missing_ok=True)
                error = str(refusal)
            else:
                self.message_user(
                    request, "Bundle uploaded: its plan is being made.", messages.SUCCESS
                )
                return HttpResponseRedirect(
                    reverse("admin:migrations_app_bundleimport_change", args=[run.pk])
                )
        pull = (
            reverse("admin:migrations_app_bundleimport_pull"),
            "or pull one from another instance",
        )
        return _render(self, request, form, "Upload a bundle", "Upload and plan", error, pull)

    def get_urls(self):
        return [
            url_path(
                "pull/",
                self.admin_site.admin_view(self.pull_view),
                name="migrations_app_bundleimport_pull",
            ),
            *super().get_urls(),
        ]

    def pull_view(self, request):
        """Pull from another instance: a worker fetches the bundle, then plans it; the plan
        is approved here like an upload's."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = PullForm(request.POST or None)
        error = ""
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                run = stream_pull.bundle_pull_create(
                    actor=request.user,
                    url=data["url"],
                    token=data["token"],
                    organizations=data["organizations"].replace(",", " ").split(),
                    selection=data["selection"] or None,
                    kinds=list(data["kinds"]),
                    since=data["since"] or None,
                    org_map=importing.org_map_parse(data["map_org"].split()),
                    on_conflict=data["on_conflict"],
                    enqueue=True,
                )
            except services.BundleRefused as refusal:
                error = str(refusal)
            else:
                self.message_user(
                    request, "Pull started: its plan is made once it is here.", messages.SUCCESS
                )
                return HttpResponseRedirect(
                    reverse("admin:migrations_app_bundleimport_change", args=[run.pk])
                )
        return _render(self, request, form, "Pull from another instance", "Start the pull", error)

    @form_action(description="Approve the plan and apply it")
    def approve(self, request, queryset):
        for run in queryset:
            try:
                importing.bundle_import_approve(actor=request.user, run=run)
            except services.BundleRefused as refusal:
                self.message_user(request, str(refusal), messages.ERROR)
            else:
                self.message_user(request, f"Import {run.pk} approved.", messages.SUCCESS)


@admin.register(BundleSelection)
class BundleSelectionAdmin(FleetModelAdmin):
    list_display = ("name", "organizations", "kinds", "inventories", "credentials")


@admin.register(BundleRowState)
class BundleRowStateAdmin(ReadOnlyModelAdmin):
    list_display = ("signer", "kind", "key", "digest")
    search_fields = ("=key",)


class TrustForm(forms.ModelForm):
    class Meta:
        model = TrustedBundleKey
        fields = ("name", "public_key")


@admin.register(TrustedBundleKey)
class TrustedBundleKeyAdmin(FleetModelAdmin):
    list_display = ("key_id", "name", "created_at")
    form = TrustForm

    def has_change_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        try:
            ident = services.trusted_key_add(actor=request.user, text=obj.public_key, name=obj.name)
        except services.BundleRefused as refusal:
            raise PermissionDenied(str(refusal)) from refusal
        obj.pk = TrustedBundleKey.objects.get(key_id=ident).pk
