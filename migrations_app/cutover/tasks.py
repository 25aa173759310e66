"""Cutover tasks: one shape, keyed on a run id (fleet_app.runs.RunTask claims the run,
retries transient errors with backoff and fails the row when it gives up).

Each keeps the name it was released under, so queued messages still find it.
"""

from celery import shared_task

from fleet_app.runs import RunTask, run_execute

from . import imports, rotation
from .models import MappingImportRun, RotationRun


@shared_task(
    base=RunTask,
    bind=False,
    name="migrations_app.tasks.rotation_run_execute",
    run_model="migrations_app.RotationRun",
)
def rotation_run_execute(run_id: int, queue: str | None = None):
    return run_execute(RotationRun, run_id, rotation.rotation_run_work, queue=queue)


@shared_task(
    base=RunTask,
    name="migrations_app.tasks.mapping_import_run_execute",
    run_model="migrations_app.MappingImportRun",
)
def mapping_import_run_execute(run_id: int):
    return run_execute(MappingImportRun, run_id, imports.mapping_import_run_execute)


@shared_task(name="migrations_app.tasks.mapping_uploads_expire", acks_late=True)
def mapping_uploads_expire() -> int:
    """Run by beat every hour: uploads of mappings past their age are deleted."""
    return imports.mapping_uploads_expire()
