"""The app's Celery tasks, one module per capability; Celery autodiscovers this module only."""

from .accounts.tasks import dedupe_run_execute, quota_run_execute
from .bundles.tasks import bundle_export_execute, bundle_import_execute
from .cutover.tasks import (
    mapping_import_run_execute,
    mapping_uploads_expire,
    rotation_run_execute,
)

__all__ = [
    "bundle_export_execute",
    "bundle_import_execute",
    "dedupe_run_execute",
    "mapping_import_run_execute",
    "mapping_uploads_expire",
    "quota_run_execute",
    "rotation_run_execute",
]
