"""Importing legacy mappings from a page: upload, plan, confirm, import, as run rows.

- ``mapping_import_upload`` checks the file as ``import_legacy_mappings`` does before its
  first row (suffix, size, a CSV header with the required columns, a JSON document of the
  right shape): a wrong upload is refused with one sentence and leaves nothing behind. The
  file is kept sealed (it holds legacy tokens in clear), and a plan run (a dry run of the
  import) is enqueued.
- ``mapping_import_apply_start`` imports the file of a finished plan, once: the plan page
  is what staff confirm. ``mapping_import_discard`` drops an upload nobody will import.
- ``mapping_import_run_execute`` is the task's body for both: the same streaming import as
  the command, in batches; its progress is the bytes of the file read.
"""

import contextlib
import datetime as dt
import tempfile
import uuid
from pathlib import Path
from typing import Any

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.core.cache import cache
from django.core.files import File
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone

from fleet_app import sealing
from fleet_app import services as fleet
from fleet_app.errors import Conflict, InvalidInput
from fleet_app.locks import LockHeld, named_lock
from fleet_app.models import Organization, User
from fleet_app.runs import RunState, run_enqueue, run_finish
from fleet_app.selectors import organizations_visible_to

from ..legacy_import import FORMATS, Export, LegacyImport
from .models import MappingImportRun
from .services import mappings_import_feed

REQUIRED = ("legacy_system_id", "legacy_token")
LIST_KEY = "proxy_mappings"
UPLOAD_FOLDER = "imports/mappings"
# The lock the command holds too: one import of mappings at a time.
LOCK = "import_legacy_mappings"


def _purpose(stored_name: str) -> str:
    return f"mapping-import:{stored_name}"


def _progress_key(run_id: int) -> str:
    # A plan's writes are rolled back at its end, its progress with them: the bytes read
    # so far are kept in the cache as well, where a page can read them.
    return f"migrations:mapping-import-progress:{run_id}"


def mapping_import_progress(run: MappingImportRun) -> int:
    """Bytes of the file read so far."""
    if run.is_finished:
        return run.done
    return max(run.done, cache.get(_progress_key(run.pk)) or 0)


def _file_check(path: Path, shown: str) -> None:
    """The checks the command makes before its first row, as one sentence naming the
    uploaded file (not where it was put)."""
    try:
        export = Export(path)
        if export.kind == "csv":
            missing = [c for c in REQUIRED if c not in export.header()]
            if missing:
                raise InvalidInput(f"The CSV header lacks {', '.join(missing)}.")
        elif export.kind == "json":
            is_array, lists, _ = export.json_lists()
            if not is_array and LIST_KEY not in lists:
                raise InvalidInput(
                    f"The file must hold a JSON list of mappings (or {{{LIST_KEY!r}: [...]}})."
                )
    except CommandError as error:
        raise InvalidInput(str(error).replace(str(path), shown)) from None


def mapping_import_upload(
    *,
    actor: User,
    upload: UploadedFile,
    organization: Organization | None = None,
    born_registered: bool = False,
    queue: str | None = None,
) -> MappingImportRun:
    """Check, seal and keep an uploaded export, and enqueue its plan."""
    name = Path(upload.name or "").name[:255] or "upload"
    suffix = Path(name).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInput(f"The file must end in {', '.join(FORMATS)}, not {name!r}.")
    limit = settings.MAPPINGS_UPLOAD_MAX_BYTES
    if not upload.size:
        raise InvalidInput(f"{name} is empty.")
    if upload.size > limit:
        raise InvalidInput(
            f"{name} is larger than {limit // (1 << 20)} MiB: import it with "
            "manage.py import_legacy_mappings instead."
        )
    if (
        organization is not None
        and not organizations_visible_to(actor).filter(pk=organization.pk).exists()
    ):
        raise InvalidInput("That organization is not one you reach.")
    stored_name = f"{UPLOAD_FOLDER}/{uuid.uuid4().hex}{suffix}.sealed"
    with tempfile.TemporaryDirectory(prefix="cutover-upload-") as work:
        clear = Path(work) / f"upload{suffix}"
        with clear.open("wb") as handle:
            for chunk in upload.chunks():
                handle.write(chunk)
        _file_check(clear, name)
        sealed = Path(work) / "sealed"
        with clear.open("rb") as source, sealed.open("wb") as target:
            sealing.file_seal(source, target, purpose=_purpose(stored_name))
        clear.unlink()
        with sealed.open("rb") as handle:
            stored_name = default_storage.save(stored_name, File(handle))
    with transaction.atomic():
        run = MappingImportRun.objects.create(
            mode=MappingImportRun.Mode.PLAN,
            file_name=name,
            stored_name=stored_name,
            size=upload.size,
            total=upload.size,
            organization=organization,
            born_registered=born_registered,
            created_by=actor,
            phase="queued",
        )
        fleet.audit_record(
            actor=actor,
            action="mapping_import.upload",
            obj=run,
            after={"file_name": name, "size": upload.size, "mode": run.mode},
            organization=actor.organization if actor.organization_id else None,
        )
        run_enqueue(run, queue=queue)
    return run


def _stored_delete(stored_name: str) -> None:
    if stored_name:
        with contextlib.suppress(FileNotFoundError):
            default_storage.delete(stored_name)


def mapping_import_apply_start(
    *, actor: User, plan: MappingImportRun, queue: str | None = None
) -> MappingImportRun:
    """Import the file of a finished plan (once); the run is enqueued after commit."""
    with transaction.atomic():
        plan = MappingImportRun.objects.select_for_update().get(pk=plan.pk)
        if plan.mode != MappingImportRun.Mode.PLAN:
            raise InvalidInput(f"Import {plan.pk} is not a plan: there is nothing to confirm.")
        applied = plan.applies.exclude(state=RunState.FAILED).first()
        if applied is not None:
            raise Conflict(f"This plan was already confirmed: import {applied.pk}.")
        if plan.state != RunState.SUCCEEDED:
            raise InvalidInput(
                f"The plan is {plan.get_state_display().lower()}: only a finished plan can "
                "be imported."
            )
        if not plan.stored_name:
            raise InvalidInput("The upload of this plan was discarded: upload the file again.")
        run = MappingImportRun.objects.create(
            mode=MappingImportRun.Mode.APPLY,
            file_name=plan.file_name,
            stored_name=plan.stored_name,
            size=plan.size,
            total=plan.size,
            organization=plan.organization,
            born_registered=plan.born_registered,
            plan=plan,
            created_by=actor,
            phase="queued",
        )
        fleet.audit_record(
            actor=actor,
            action="mapping_import.apply",
            obj=run,
            after={
                "plan": plan.pk,
                "file_name": plan.file_name,
                "would_create": (plan.report or {}).get("created", 0),
            },
            organization=actor.organization if actor.organization_id else None,
        )
        run_enqueue(run, queue=queue)
    return run


def mapping_import_discard(*, actor: User, plan: MappingImportRun) -> MappingImportRun:
    """Drop the upload of a plan nobody will import (the plan row stays, as history)."""
    with transaction.atomic():
        plan = MappingImportRun.objects.select_for_update().get(pk=plan.pk)
        applies = plan.applies.exclude(state=RunState.FAILED)
        if plan.mode != MappingImportRun.Mode.PLAN or applies.exists():
            raise Conflict("Only the upload of a plan not yet imported can be discarded.")
        stored, plan.stored_name = plan.stored_name, ""
        plan.phase = "discarded"
        plan.save(update_fields=["stored_name", "phase"])
        fleet.audit_record(
            actor=actor,
            action="mapping_import.discard",
            obj=plan,
            after={"file_name": plan.file_name},
            organization=actor.organization if actor.organization_id else None,
        )
        transaction.on_commit(lambda: _stored_delete(stored))
    return plan


def mapping_uploads_expire(*, now=None) -> int:
    """Delete the sealed uploads older than ``MAPPINGS_UPLOAD_MAX_AGE_HOURS`` that no
    unfinished import still reads (they could no longer be opened anyway); the rows stay,
    marked expired. Returns how many were deleted."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(hours=settings.MAPPINGS_UPLOAD_MAX_AGE_HOURS)
    stale = (
        MappingImportRun.objects.filter(created_at__lt=cutoff)
        .exclude(stored_name="")
        .exclude(state__in=(RunState.PENDING, RunState.RUNNING))
        .exclude(applies__state__in=(RunState.PENDING, RunState.RUNNING))
    )
    names = set(stale.values_list("stored_name", flat=True))
    for name in names:
        _stored_delete(name)
    MappingImportRun.objects.filter(stored_name__in=names).update(
        stored_name="", phase="expired", updated_at=now
    )
    return len(names)


def _report(run: LegacyImport) -> dict[str, Any]:
    report = run.report
    return {
        "read": report.read,
        "created": report.created["mappings"],
        "unchanged": report.unchanged["mappings"],
        "refused": report.refused,
        "errors": [list(item) for item in report.errors],
        "examples": report.examples.get("mappings", []),
    }


def mapping_import_run_execute(*, run: MappingImportRun) -> str:
    """Plan or import a claimed run's file; returns the run's final state."""
    apply = run.mode == MappingImportRun.Mode.APPLY
    actor = run.created_by
    within = organizations_visible_to(actor) if actor is not None else Organization.objects.all()
    suffix = Path(run.file_name).suffix.lower()
    key = _progress_key(run.pk)
    max_age = settings.MAPPINGS_UPLOAD_MAX_AGE_HOURS * 3600
    error = ""
    MappingImportRun.objects.filter(pk=run.pk).update(
        phase="importing" if apply else "planning", updated_at=timezone.now()
    )
    with tempfile.TemporaryDirectory(prefix="cutover-import-") as work:
        path = Path(work) / f"upload{suffix}"
        try:
            with default_storage.open(run.stored_name, "rb") as source, path.open("wb") as out:
                for chunk in sealing.file_unseal(
                    source, purpose=_purpose(run.stored_name), max_age=max_age
                ):
                    out.write(chunk)
        except (FileNotFoundError, InvalidToken, ValueError):
            return run_finish(
                run,
                error="The uploaded file can no longer be read (discarded, altered, or "
                f"older than {settings.MAPPINGS_UPLOAD_MAX_AGE_HOURS} hours): upload it again.",
            )
        export = Export(path)

        def progress() -> None:
            position = export.position()
            cache.set(key, position, timeout=24 * 3600)
            if apply:
                MappingImportRun.objects.filter(pk=run.pk).update(
                    done=position, updated_at=timezone.now()
                )

        importing = LegacyImport(apply=apply, progress=progress)
        try:
            with named_lock(LOCK) if apply else contextlib.nullcontext(), importing:
                mappings_import_feed(
                    importing,
                    export.records(key=LIST_KEY),
                    within=within,
                    default_organization=run.organization,
                    born_registered=run.born_registered,
                    actor=actor,
                )
        except LockHeld:
            error = "Another import of mappings is running: confirm this plan again later."
        except CommandError as failure:
            error = str(failure).replace(str(path), run.file_name)
    report = _report(importing)
    MappingImportRun.objects.filter(pk=run.pk).update(
        report=report,
        done=run.size,
        failed=report["refused"] if apply else 0,
        phase="imported" if apply else "planned",
        updated_at=timezone.now(),
    )
    if apply and not error:
        _stored_delete(run.stored_name)
        MappingImportRun.objects.filter(pk__in=[run.pk, run.plan_id]).update(stored_name="")
    cache.delete(key)
    return run_finish(run, error=error)
