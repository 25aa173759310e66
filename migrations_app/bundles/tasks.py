"""Bundle tasks: one shape, keyed on a run id (fleet_app.runs.RunTask)."""

from celery import shared_task

from fleet_app.runs import RunTask, run_execute

from . import services, stream_pull
from .models import BundleExport, BundleImport


@shared_task(
    base=RunTask,
    bind=False,
    name="migrations_app.tasks.bundle_export_execute",
    run_model="migrations_app.BundleExport",
)
def bundle_export_execute(run_id: int):
    return run_execute(BundleExport, run_id, services.bundle_export_work)


@shared_task(
    base=RunTask,
    bind=False,
    name="migrations_app.tasks.bundle_import_execute",
    run_model="migrations_app.BundleImport",
)
def bundle_import_execute(run_id: int):
    return run_execute(BundleImport, run_id, stream_pull.bundle_pull_work)
