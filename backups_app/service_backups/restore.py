"""Restores and restore drills of service backups (seed 003's restore manager), as run
rows worked by Celery tasks.

- ``restore_run_start`` computes the plan at once (the dry run); a dry run ends there,
  otherwise the run is enqueued. ``restore_run_execute`` fetches the archive, checks its
  SHA-256 (a mismatch fails the run before anything is written), restores, verifies.
- A drill is a restore of a service's latest good backup to a scratch target, verified,
  then dropped; ``selectors.services_overview`` flags a service whose latest good drill
  is older than ``BACKUP_DRILL_MAX_AGE_DAYS``.
"""

import hashlib
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet_app import services as fleet
from fleet_app.errors import Conflict, InvalidInput
from fleet_app.models import User
from fleet_app.runs import RunState, run_enqueue, run_finish, run_log, run_progress

from ..errors import NotFound
from ..storage import get_store
from .adapters import AdapterError, get_adapter
from .models import BackupRun, RestoreRun, Service
from .selectors import latest_good_backup
from .services import actor_id, run_logger, workdir_fresh

logger = logging.getLogger(__name__)

RESTORE_STEPS = 3  # fetch, restore, verify


# --- Fetching an archive, verified -----------------------------------------------------------


class ChecksumMismatch(Exception):
    """The stored archive is not the one that was backed up."""


def archive_fetch(backup: BackupRun, path: Path) -> None:
    """Copy a backup's archive from the store to ``path``; its SHA-256 must match."""
    if not backup.storage_key or backup.pruned_at is not None:
        raise NotFound(f"Backup run {backup.pk} has no archive (failed or pruned).")
    digest, size = hashlib.sha256(), 0
    with path.open("wb") as handle:
        for chunk in get_store().read(backup.storage_key):
            digest.update(chunk)
            size += len(chunk)
            handle.write(chunk)
    if size != backup.size or digest.hexdigest() != backup.sha256:
        path.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"archive of backup run {backup.pk} is corrupt: {size} bytes with sha256 "
            f"{digest.hexdigest()}, expected {backup.size} bytes with sha256 {backup.sha256}"
        )


def restore_plan(*, backup: BackupRun, target: dict[str, Any] | None) -> dict[str, Any]:
    """What restoring ``backup`` to ``target`` (None: the original) would do."""
    if backup.state != RunState.SUCCEEDED or not backup.storage_key:
        raise InvalidInput(f"Backup run {backup.pk} did not succeed: there is nothing to restore.")
    if backup.pruned_at is not None:
        raise InvalidInput(f"Backup run {backup.pk}'s archive was removed by retention.")
    adapter = get_adapter(backup.service.adapter)
    original = adapter.original_target(backup.service.config)
    try:
        cleaned = adapter.target_check(target if target else original)
        plan = adapter.plan(backup.service.config, cleaned, backup.manifest)
    except AdapterError as error:
        raise InvalidInput(str(error)) from None
    plan["original_target"] = cleaned == adapter.target_check(original)
    plan["backup"] = {"id": backup.pk, "size": backup.size, "sha256": backup.sha256}
    return plan


@transaction.atomic
def restore_run_start(
    *,
    actor: User | None,
    backup: BackupRun,
    target: dict[str, Any] | None = None,
    dry_run: bool = True,
    queue: str | None = None,
) -> RestoreRun:
    """Plan a restore; unless it is a dry run, enqueue it after commit."""
    plan = restore_plan(backup=backup, target=target)
    now = timezone.now()
    run = RestoreRun.objects.create(
        backup=backup,
        service=backup.service,
        target=plan["target"],
        dry_run=dry_run,
        plan=plan,
        total=RESTORE_STEPS,
        phase="planned" if dry_run else "queued",
        created_by_id=actor_id(actor),
    )
    if dry_run:
        RestoreRun.objects.filter(pk=run.pk).update(
            state=RunState.SUCCEEDED, started_at=now, finished_at=now, updated_at=now
        )
        run.refresh_from_db()
        return run
    fleet.audit_record(
        actor=actor,
        action="restore_run.start",
        obj=run,
        after={"backup": backup.pk, "target": plan["target"], "plan": plan},
    )
    run_log(run, f"queued by {actor if actor is not None else 'system'}: {plan['action']}")
    run_enqueue(run, queue=queue)
    return run


@transaction.atomic
def restore_plan_confirm(
    *, actor: User | None, plan: RestoreRun, queue: str | None = None
) -> RestoreRun:
    """Carry out a plan (a dry run) once: its row is claimed with a conditional UPDATE, so
    a second click or a re-sent form starts no second restore."""
    if not plan.dry_run:
        raise Conflict(f"Restore run {plan.pk} is under way or done: it is not a plan.")
    claimed = (
        RestoreRun.objects.filter(pk=plan.pk, dry_run=True)
        .exclude(phase="confirmed")
        .update(phase="confirmed", updated_at=timezone.now())
    )
    if not claimed:
        raise Conflict("This plan was already confirmed: its restore is in the list.")
    return restore_run_start(
        actor=actor, backup=plan.backup, target=plan.target, dry_run=False, queue=queue
    )


def restore_run_execute(*, run: RestoreRun) -> str:
    """Fetch (checked), restore, verify a claimed run; a drill also drops its scratch
    target. Returns the run's final state."""
    adapter = get_adapter(run.service.adapter)
    config, backup, log = run.service.config, run.backup, run_logger(run)
    work = workdir_fresh(f"restore-{run.pk}")
    error = ""
    try:
        run_progress(run, phase="fetching")
        archive = work / f"archive{adapter.extension}"
        archive_fetch(backup, archive)
        log(f"fetched backup run {backup.pk}: {backup.size} bytes, sha256 verified")
        run_progress(run, done=1, phase="restoring")
        adapter.restore(config, run.target, archive, log)
        run_progress(run, done=1, phase="verifying")
        result = adapter.verify(config, run.target, backup.manifest, log)
        RestoreRun.objects.filter(pk=run.pk).update(verify=result, verified=result["ok"])
        if result["ok"]:
            run_progress(run, done=1, phase="verified")
        else:
            failed = [c["check"] for c in result["checks"] if not c["ok"]]
            log(f"verify failed: {', '.join(failed[:10])}")
            if run.purpose == RestoreRun.Purpose.DRILL:
                error = f"verify failed: {', '.join(failed[:10])}"
            else:
                # Data was written but does not match the backup: partially failed.
                run_progress(run, failed=1, phase="verify failed")
    except Exception as exc:
        logger.exception("restore run %s failed", run.pk)
        log(f"failed: {exc}")
        error = f"{type(exc).__name__}: {exc}"
        RestoreRun.objects.filter(pk=run.pk, verified__isnull=True).update(verified=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if run.purpose == RestoreRun.Purpose.DRILL:
            try:
                adapter.scratch_drop(config, run.target)
                log("dropped the scratch target")
            except Exception as exc:
                logger.exception("drill %s: could not drop its scratch target", run.pk)
                log(f"could not drop the scratch target: {exc}")
    return run_finish(run, error=error)


# --- Drills -----------------------------------------------------------------------------------


def restore_drill_start(*, service: Service, queue: str | None = None) -> RestoreRun | None:
    """Restore the latest good backup of ``service`` to a scratch target and verify it.

    None when the service has no backup to drill. The scratch target is made here (a
    database, a folder), so the run's target is known and shown before it runs.
    """
    backup = latest_good_backup(service)
    if backup is None:
        return None
    adapter = get_adapter(service.adapter)
    token = uuid.uuid4().hex[:12]
    run = RestoreRun.objects.create(
        backup=backup,
        service=service,
        purpose=RestoreRun.Purpose.DRILL,
        target={},
        total=RESTORE_STEPS,
        phase="preparing",
    )
    # Preparing a scratch database is slow I/O: outside any transaction.
    try:
        target = adapter.scratch_target(service.config, token)
    except Exception as error:
        logger.exception("drill %s: could not prepare a scratch target", run.pk)
        RestoreRun.objects.filter(pk=run.pk).update(verified=False)
        run_log(run, f"could not prepare a scratch target: {error}")
        run_finish(run, error=f"scratch target: {error}")
        return run
    RestoreRun.objects.filter(pk=run.pk).update(target=target, phase="queued")
    run.target = target
    run_log(run, f"drill of backup run {backup.pk} into {target}")
    run_enqueue(run, queue=queue)
    return run


def restore_drills_start(*, queue: str | None = None) -> list[RestoreRun]:
    """A drill of every enabled service that has a good backup."""
    runs = []
    for service in Service.objects.filter(enabled=True).order_by("name"):
        run = restore_drill_start(service=service, queue=queue)
        if run is not None:
            runs.append(run)
    return runs
