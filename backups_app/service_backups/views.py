"""The restore pages: pick a backup and a target, read the plan (what would be written
where), confirm it, and follow the restore as a job with progress. The platform's alone,
as the services are."""

from typing import Any

from django import forms
from django.contrib import admin
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import filesizeformat

from fleet_app import access
from fleet_app.access_http import dashboard
from fleet_app.errors import FleetError

from . import restore, selectors
from .models import BackupRun, RestoreRun

BACKUPS_OFFERED = 200
# Items of a plan's list the page names; the count covers all of them.
PLAN_ITEMS_SHOWN = 50


def _backup_label(backup: BackupRun) -> str:
    when = backup.finished_at or backup.created_at
    return (
        f"{backup.service.name} — backup {backup.pk} of {when:%Y-%m-%d %H:%M} "
        f"({filesizeformat(backup.size)})"
    )


def _target_parse(text: str) -> dict[str, str] | None:
    pairs = [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
    if not pairs:
        return None
    target = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise forms.ValidationError(
                f"Write the target as key=value (e.g. database=restored), not {pair!r}."
            )
        target[key.strip()] = value.strip()
    return target


class RestoreForm(forms.Form):
    backup = forms.TypedChoiceField(coerce=int, label="Backup")
    target = forms.CharField(
        required=False,
        label="Restore into",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="Empty: back where it came from. Otherwise key=value, one a line: "
        "database=NAME (PostgreSQL), path=/folder (directory), alias=NAME (Cutover data).",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        backups = selectors.backups_restorable()[:BACKUPS_OFFERED]
        field = self.fields["backup"]
        assert isinstance(field, forms.TypedChoiceField)
        field.choices = [(b.pk, _backup_label(b)) for b in backups]

    def clean_target(self) -> dict[str, str] | None:
        return _target_parse(self.cleaned_data.get("target") or "")


@dashboard("backup-restore", write="r")
def restore_page(request):
    """Pick a backup and a target; the plan is computed (a dry run) and shown next."""
    initial = {"backup": request.GET.get("backup")} if request.GET.get("backup") else None
    form = RestoreForm(request.POST or None, initial=initial)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            backup = selectors.backups_restorable().filter(pk=form.cleaned_data["backup"]).first()
            try:
                if backup is None:
                    raise FleetError("That backup can no longer be restored: pick another.")
                plan = restore.restore_run_start(
                    actor=request.user,
                    backup=backup,
                    target=form.cleaned_data["target"],
                    dry_run=True,
                )
            except FleetError as error:
                form.add_error(None, error.message)
            else:
                return redirect("backup-restore-run", run_id=plan.pk)
        status = 400
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": "Restore a backup",
        "form": form,
        "runs": list(selectors.restores_latest(20)),
    }
    return render(request, "backups_app/restore.html", context, status=status)


def _plan_rows(plan: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, value in sorted(plan.items()):
        if key in ("action", "target", "backup"):
            continue
        if isinstance(value, list | tuple):
            rows.append(
                {
                    "key": key,
                    "is_list": True,
                    "count": len(value),
                    "names": [str(v) for v in value[:PLAN_ITEMS_SHOWN]],
                    "more": max(0, len(value) - PLAN_ITEMS_SHOWN),
                }
            )
        else:
            rows.append({"key": key, "value": value})
    return rows


@dashboard("backup-restore-run", kind="route", write="r")
def restore_run_page(request, run_id: int):
    """A restore's plan, with the confirmation that carries it out, or its progress."""
    run = get_object_or_404(
        RestoreRun.objects.select_related("backup", "service", "created_by").filter(
            purpose=RestoreRun.Purpose.RESTORE
        ),
        pk=run_id,
    )
    error, status = "", 200
    if request.method == "POST":
        try:
            started = restore.restore_plan_confirm(actor=request.user, plan=run)
        except FleetError as failure:
            error, status = failure.message, failure.status
        else:
            return redirect("backup-restore-run", run_id=started.pk)
    plan = run.plan or {}
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": (
            f"Plan: restore backup {run.backup_id} of {run.service.name}"
            if run.dry_run
            else f"Restore run {run.pk} of {run.service.name}"
        ),
        "run": run,
        "plan": plan,
        "plan_rows": _plan_rows(plan),
        "backup_label": _backup_label(run.backup),
        "error": error,
        "can_apply": run.dry_run
        and run.phase != "confirmed"
        and access.allowed(request.user, "dashboard", "backup-restore", "r"),
    }
    return render(request, "backups_app/restore_run.html", context, status=status)
