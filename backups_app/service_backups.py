"""Service backups, restores and restore drills (seed 003's backup, restore and storage
managers), as run rows worked by Celery tasks.

- ``backup_run_start`` writes a pending ``BackupRun`` and enqueues it after commit;
  ``backup_run_execute`` has the adapter write the archive to a work folder, streams it
  into the blob store while hashing it, and records key, size, SHA-256 and manifest.
- ``restore_run_start`` computes the plan at once (the dry run); a dry run ends there,
  otherwise the run is enqueued. ``restore_run_execute`` fetches the archive, checks its
  SHA-256 (a mismatch fails the run before anything is written), restores, verifies.
- A drill is a restore of a service's latest good backup to a scratch target, verified,
  then dropped; ``selectors.services_overview`` flags a service whose latest good drill
  is older than ``BACKUP_DRILL_MAX_AGE_DAYS``.
- A schedule's timing is a django-celery-beat entry kept in step by
  ``backup_schedule_periodic_task_sync``; beat sends ``backup_schedule_run`` at each due
  time, which claims it with a conditional UPDATE. Retention per schedule (count and age)
  removes archives but keeps the rows as history, and never removes a service's latest
  good backup.

Execution is idempotent on the run id: a finished run is left alone, and a run found
``running`` (its worker died, the message came back) starts its work again from the top;
archive keys are derived from the run id, so a second attempt overwrites the first.
"""

import datetime as dt
import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from fleet_app import services as fleet
from fleet_app.errors import InvalidInput
from fleet_app.models import User
from fleet_app.runs import RunState, run_claim, run_finish, run_log, run_progress

from .adapters import AdapterError, get_adapter
from .errors import NotFound
from .models import BackupRun, BackupSchedule, RestoreRun, Service
from .storage import get_store

logger = logging.getLogger(__name__)

BACKUP_STEPS = 2  # dump, store
RESTORE_STEPS = 3  # fetch, restore, verify


def _actor_id(actor: User | None) -> int | None:
    return actor.pk if actor is not None and actor.pk else None


def _enqueue(task_name: str, run_id: int, queue: str | None) -> None:
    from . import tasks

    task = getattr(tasks, task_name)
    task.apply_async(args=(run_id,), **({"queue": queue} if queue else {}))


def _workdir(name: str) -> Path:
    path = Path(settings.BACKUP_WORK_DIR) / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _log(run) -> Any:
    return lambda line: run_log(run, line)


# --- Services ---------------------------------------------------------------------------------


@transaction.atomic
def service_create(
    *, actor: User | None, name: str, adapter: str, config: dict[str, Any] | None = None
) -> Service:
    config = config or {}
    try:
        get_adapter(adapter).config_check(config)
    except AdapterError as error:
        raise InvalidInput(str(error)) from None
    service = Service.objects.create(name=name, adapter=adapter, config=config)
    fleet.audit_record(
        actor=actor, action="service.create", obj=service, after=fleet.audit_snapshot(service)
    )
    return service


def service_by_name(name: str) -> Service:
    service = Service.objects.filter(name=name).first()
    if service is None:
        known = ", ".join(Service.objects.values_list("name", flat=True)) or "none configured"
        raise NotFound(f"No service {name!r} (services: {known}).")
    return service


# --- Backups ----------------------------------------------------------------------------------


@transaction.atomic
def backup_run_start(
    *,
    actor: User | None,
    service: Service,
    schedule: BackupSchedule | None = None,
    queue: str | None = None,
) -> BackupRun:
    """A pending backup run of ``service``, enqueued after commit."""
    if not service.enabled:
        raise InvalidInput(f"Service {service.name} is disabled.")
    run = BackupRun.objects.create(
        service=service,
        schedule=schedule,
        phase="queued",
        total=BACKUP_STEPS,
        created_by_id=_actor_id(actor),
    )
    fleet.audit_record(
        actor=actor,
        action="backup_run.start",
        obj=run,
        after={"service": service.name, "schedule": schedule.pk if schedule else None},
    )
    run_log(run, f"queued by {actor if actor is not None else 'schedule'}")
    transaction.on_commit(lambda: _enqueue("backup_run_execute", run.pk, queue))
    return run


def _store_file(path: Path, key: str) -> tuple[int, str]:
    """Stream a local file into the store, hashing it on the way."""
    digest, size = hashlib.sha256(), 0
    writer = get_store().writer(key)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
                writer.write(chunk)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return size, digest.hexdigest()


def backup_run_execute(*, run_id: int) -> str | None:
    """Do the backup of a run; returns its final state (None if it was not ours to do)."""
    run = BackupRun.objects.select_related("service").filter(pk=run_id).first()
    if run is None or run.is_finished or not run_claim(run):
        return None
    service = run.service
    adapter = get_adapter(service.adapter)
    work = _workdir(f"backup-{run.pk}")
    key = f"services/{service.name}/{run.pk}{adapter.extension}"
    try:
        run_progress(run, phase="dumping")
        archive = work / f"archive{adapter.extension}"
        manifest = adapter.backup(service.config, archive, _log(run))
        run_progress(run, done=1, phase="storing")
        size, sha256 = _store_file(archive, key)
        try:
            BackupRun.objects.filter(pk=run.pk).update(
                storage_key=key, size=size, sha256=sha256, manifest=manifest
            )
        except BaseException:
            get_store().delete(key)
            raise
        run_progress(run, done=1, phase="done")
        run_log(run, f"stored {size} bytes as {key}, sha256 {sha256}")
        state = run_finish(run)
    except Exception as error:
        logger.exception("backup run %s failed", run.pk)
        run_log(run, f"failed: {error}")
        state = run_finish(run, error=f"{type(error).__name__}: {error}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if state == RunState.SUCCEEDED and run.schedule_id:
        backup_retention_apply(schedule=BackupSchedule.objects.get(pk=run.schedule_id))
    return state


def backup_run_fail(*, run_id: int, error: str) -> None:
    run = BackupRun.objects.filter(pk=run_id).first()
    if run is not None and not run.is_finished:
        run_finish(run, error=error)


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


# --- Restores ---------------------------------------------------------------------------------


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
        created_by_id=_actor_id(actor),
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
    transaction.on_commit(lambda: _enqueue("restore_run_execute", run.pk, queue))
    return run


def restore_run_execute(*, run_id: int) -> str | None:
    """Fetch (checked), restore, verify; a drill also drops its scratch target."""
    run = RestoreRun.objects.select_related("backup", "service").filter(pk=run_id).first()
    if run is None or run.is_finished or not run_claim(run):
        return None
    adapter = get_adapter(run.service.adapter)
    config, backup, log = run.service.config, run.backup, _log(run)
    work = _workdir(f"restore-{run.pk}")
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


def restore_run_fail(*, run_id: int, error: str) -> None:
    run = RestoreRun.objects.filter(pk=run_id).first()
    if run is not None and not run.is_finished:
        run_finish(run, error=error)


# --- Drills -----------------------------------------------------------------------------------


def restore_drill_start(*, service: Service, queue: str | None = None) -> RestoreRun | None:
    """Restore the latest good backup of ``service`` to a scratch target and verify it.

    None when the service has no backup to drill. The scratch target is made here (a
    database, a folder), so the run's target is known and shown before it runs.
    """
    from .selectors import latest_good_backup

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
    transaction.on_commit(lambda: _enqueue("restore_run_execute", run.pk, queue))
    return run


def restore_drills_start(*, queue: str | None = None) -> list[RestoreRun]:
    """A drill of every enabled service that has a good backup."""
    runs = []
    for service in Service.objects.filter(enabled=True).order_by("name"):
        run = restore_drill_start(service=service, queue=queue)
        if run is not None:
            runs.append(run)
    return runs


# --- Schedules and retention --------------------------------------------------------------------


SCHEDULE_TASK = "backups_app.tasks.backup_schedule_run"

# A schedule's timing: beat's interval or crontab row, which staff pick or edit in the admin.
ScheduleTiming = IntervalSchedule | CrontabSchedule


def _schedule_state(schedule: BackupSchedule) -> dict[str, Any]:
    """A schedule as the audit log shows it: its own fields and its timing."""
    state = fleet.audit_snapshot(schedule)
    task = schedule.periodic_task
    state["timing"] = str(task.scheduler) if task.scheduler else None
    state["periodic_task_enabled"] = task.enabled
    return state


def backup_schedule_periodic_task_sync(
    *, schedule: BackupSchedule, timing: ScheduleTiming | None = None, deleted: bool = False
) -> PeriodicTask | None:
    """Make the beat entry of ``schedule`` match it: the only code that writes those entries.

    - a schedule not saved yet is saved here, after its entry (which it points at) and
      before the entry names it (the entry's argument is the schedule's id); ``timing`` is
      required then;
    - a saved schedule's entry takes ``timing`` when given, and mirrors ``enabled``;
    - ``deleted``: the schedule's row is gone, its entry goes too.

    Entries are saved through the model, so beat's change marker moves and a running
    ``DatabaseScheduler`` reloads them.
    """
    if deleted:
        if schedule.periodic_task_id:
            PeriodicTask.objects.get(pk=schedule.periodic_task_id).delete()
        return None
    if schedule.pk is None:
        if timing is None:
            raise InvalidInput("A schedule needs an interval or a crontab.")
        schedule.periodic_task = PeriodicTask.objects.create(
            name=f"backup schedule {uuid.uuid4().hex}",
            task=SCHEDULE_TASK,
            enabled=False,
            **{"interval" if isinstance(timing, IntervalSchedule) else "crontab": timing},
        )
        schedule.save()
    task = schedule.periodic_task
    if timing is not None:
        task.interval = timing if isinstance(timing, IntervalSchedule) else None
        task.crontab = timing if isinstance(timing, CrontabSchedule) else None
    task.name = f"backup schedule {schedule.pk}"
    task.task = SCHEDULE_TASK
    task.args = json.dumps([schedule.pk])
    task.description = f"Back up service {schedule.service.name} (schedule {schedule.pk})."
    task.enabled = schedule.enabled
    try:
        task.save()
    except ValidationError as error:
        raise InvalidInput("; ".join(error.messages)) from None
    return task


@transaction.atomic
def backup_schedule_create(
    *,
    actor: User | None,
    service: Service,
    timing: ScheduleTiming,
    keep_count: int = 7,
    keep_days: int = 30,
    enabled: bool = True,
) -> BackupSchedule:
    """A schedule of ``service`` and its beat entry, which sends ``backup_schedule_run``."""
    if timing.pk is None:
        timing.save()
    schedule = BackupSchedule(
        service=service, keep_count=keep_count, keep_days=keep_days, enabled=enabled
    )
    backup_schedule_periodic_task_sync(schedule=schedule, timing=timing)
    fleet.audit_record(
        actor=actor, action="backupschedule.create", obj=schedule, after=_schedule_state(schedule)
    )
    return schedule


@transaction.atomic
def backup_schedule_update(
    *,
    actor: User | None,
    schedule: BackupSchedule,
    timing: ScheduleTiming | None = None,
    keep_count: int | None = None,
    keep_days: int | None = None,
    enabled: bool | None = None,
) -> BackupSchedule:
    """Change a schedule's timing, retention or ``enabled``; its beat entry follows."""
    current = (
        BackupSchedule.objects.select_for_update(of=("self",))
        .select_related("service", "periodic_task__interval", "periodic_task__crontab")
        .get(pk=schedule.pk)
    )
    before = _schedule_state(current)
    changes = {
        name: value
        for name, value in (
            ("keep_count", keep_count),
            ("keep_days", keep_days),
            ("enabled", enabled),
        )
        if value is not None and getattr(current, name) != value
    }
    for name, value in changes.items():
        setattr(current, name, value)
    if changes:
        current.save(update_fields=list(changes))
    if timing is not None and timing.pk is None:
        timing.save()
    backup_schedule_periodic_task_sync(schedule=current, timing=timing)
    after = _schedule_state(current)
    if after != before:
        fleet.audit_record(
            actor=actor, action="backupschedule.update", obj=current, before=before, after=after
        )
    return current


@transaction.atomic
def backup_schedule_delete(*, actor: User | None, schedule: BackupSchedule) -> None:
    """Delete a schedule and its beat entry; its backups stay (``schedule`` emptied)."""
    fleet.audit_record(
        actor=actor,
        action="backupschedule.delete",
        obj=schedule,
        before=_schedule_state(schedule),
    )
    schedule.delete()
    backup_schedule_periodic_task_sync(schedule=schedule, deleted=True)


def _schedule_due(schedule: BackupSchedule, now: dt.datetime) -> bool:
    """Whether a due time of the schedule's timing has come since its last start.

    An interval counts as due half an interval early: the worker's clock for one message
    is not beat's (queue latency varies), and a duplicate of one due time arrives well
    within half an interval of the first. A crontab's due times are fixed instants, which
    need no such margin.
    """
    if schedule.last_run_at is None:
        return True
    task = schedule.periodic_task
    if task.interval is not None:
        every = task.interval.schedule.run_every
        return now - schedule.last_run_at >= every / 2
    if task.crontab is not None:
        crontab = task.crontab.schedule
        crontab.nowfun = lambda: now.astimezone(crontab.tz)
        return crontab.is_due(schedule.last_run_at)[0]
    return False


def backup_schedule_run(
    *, schedule_id: int, now: dt.datetime | None = None, queue: str | None = None
) -> BackupRun | None:
    """Start the backup of a due schedule (beat sends this at each due time).

    Once per due time: the start is claimed by moving ``last_run_at`` on from the value
    read, in the transaction that writes the run, so two copies of one message (two beats,
    a redelivery) start one backup, and a copy that arrives after the start finds the
    schedule not due. None when nothing was started.
    """
    now = now or timezone.now()
    schedule = (
        BackupSchedule.objects.select_related(
            "service", "periodic_task__interval", "periodic_task__crontab"
        )
        .filter(pk=schedule_id)
        .first()
    )
    if schedule is None or not schedule.enabled or not schedule.service.enabled:
        return None
    if not _schedule_due(schedule, now):
        logger.info("backup schedule %s: not due, a copy of a message already run", schedule.pk)
        return None
    with transaction.atomic():
        claimed = (
            BackupSchedule.objects.filter(pk=schedule.pk, last_run_at=schedule.last_run_at)
            if schedule.last_run_at is not None
            else BackupSchedule.objects.filter(pk=schedule.pk, last_run_at__isnull=True)
        ).update(last_run_at=now)
        if not claimed:
            return None
        return backup_run_start(
            actor=None, service=schedule.service, schedule=schedule, queue=queue
        )


def backup_retention_apply(
    *, schedule: BackupSchedule, now: dt.datetime | None = None
) -> list[int]:
    """Remove the archives of a schedule's backups beyond ``keep_count`` or older than
    ``keep_days``; the rows stay (``pruned_at``). The service's latest good backup stays."""
    from .selectors import latest_good_backup

    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=schedule.keep_days)
    newest_good = latest_good_backup(schedule.service)
    keep_pk = newest_good.pk if newest_good else None
    runs = list(
        BackupRun.objects.filter(
            schedule=schedule, state=RunState.SUCCEEDED, pruned_at__isnull=True
        ).order_by("-pk")
    )
    pruned = []
    for index, run in enumerate(runs):
        too_many = index >= schedule.keep_count
        too_old = run.created_at < cutoff
        if run.pk == keep_pk or not (too_many or too_old):
            continue
        claimed = BackupRun.objects.filter(pk=run.pk, pruned_at__isnull=True).update(pruned_at=now)
        if claimed:
            try:
                get_store().delete(run.storage_key)
            except Exception:
                logger.exception("could not delete the archive %s", run.storage_key)
            run_log(run, "archive removed by retention")
            pruned.append(run.pk)
    return pruned
