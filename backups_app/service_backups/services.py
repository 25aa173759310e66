"""Service backups (seed 003's backup and storage managers), as run rows worked by
Celery tasks.

- ``backup_run_start`` writes a pending ``BackupRun`` and enqueues it after commit;
  ``backup_run_execute`` has the adapter write the archive to a work folder, streams it
  into the blob store while hashing it, and records key, size, SHA-256 and manifest.
- Retention per schedule (count and age) removes archives but keeps the rows as
  history, and never removes a service's latest good backup; a scheduled backup applies
  it when it succeeds.

Restores and drills are in ``restore``, schedules in ``schedules``. Execution is
idempotent on the run id: the task claims the row (a finished run is left alone, a run
found ``running`` starts its work again from the top); archive keys are derived from the
run id, so a second attempt overwrites the first.
"""

import datetime as dt
import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from fleet_app import services as fleet
from fleet_app.errors import InvalidInput
from fleet_app.models import User
from fleet_app.runs import RunState, run_enqueue, run_finish, run_log, run_progress

from ..errors import NotFound
from ..storage import get_store
from .adapters import AdapterError, get_adapter
from .models import BackupRun, BackupSchedule, Service
from .selectors import latest_good_backup

logger = logging.getLogger(__name__)

BACKUP_STEPS = 2  # dump, store


def actor_id(actor: User | None) -> int | None:
    """The id a run row records as its creator (none for the schedule or the system)."""
    return actor.pk if actor is not None and actor.pk else None


def workdir_fresh(name: str) -> Path:
    """An empty work folder under ``BACKUP_WORK_DIR`` (what a dead attempt left is gone)."""
    path = Path(settings.BACKUP_WORK_DIR) / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run_logger(run) -> Callable[[str], None]:
    """The log callback an adapter writes its progress lines to: the run's own log."""
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


# The service the README's `manage.py backup cutover-db` backs up: Cutover's own database.
OWN_DATABASE_SERVICE = "cutover-db"


def own_database_service_ensure(**kwargs) -> Service:
    """``cutover-db``, Cutover's own database, as a service (the demo's, idempotent):
    ``pg_dump`` on PostgreSQL, the portable data adapter on any other database (SQLite)."""
    existing = Service.objects.filter(name=OWN_DATABASE_SERVICE).first()
    if existing is not None:
        return existing
    postgres = connection.vendor == "postgresql"
    return service_create(
        actor=None,
        name=OWN_DATABASE_SERVICE,
        adapter=Service.Adapter.POSTGRES if postgres else Service.Adapter.CUTOVER_DATA,
        config={"alias": "default"},
    )


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
        created_by_id=actor_id(actor),
    )
    fleet.audit_record(
        actor=actor,
        action="backup_run.start",
        obj=run,
        after={"service": service.name, "schedule": schedule.pk if schedule else None},
    )
    run_log(run, f"queued by {actor if actor is not None else 'schedule'}")
    run_enqueue(run, queue=queue)
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


def backup_run_execute(*, run: BackupRun) -> str:
    """Do the backup of a claimed run; returns its final state.

    A failure of the dump or the store finishes the run failed with the reason in its
    log; the archive key is derived from the run id, so a redelivered run overwrites
    what a first attempt left.
    """
    service = run.service
    adapter = get_adapter(service.adapter)
    work = workdir_fresh(f"backup-{run.pk}")
    key = f"services/{service.name}/{run.pk}{adapter.extension}"
    try:
        run_progress(run, phase="dumping")
        archive = work / f"archive{adapter.extension}"
        manifest = adapter.backup(service.config, archive, run_logger(run))
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


# --- Retention ----------------------------------------------------------------------------------


def backup_retention_apply(
    *, schedule: BackupSchedule, now: dt.datetime | None = None
) -> list[int]:
    """Remove the archives of a schedule's backups beyond ``keep_count`` or older than
    ``keep_days``; the rows stay (``pruned_at``). The service's latest good backup stays."""
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
