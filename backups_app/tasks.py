"""The Celery tasks of backups_app: Celery autodiscovers this module, which imports each
capability's tasks so that every one of them is registered, and holds the storage sweep,
which serves all of them.
"""

from celery import shared_task

from . import sweep
from .cluster_backups import tasks as cluster_backups_tasks
from .service_backups import tasks as service_backups_tasks
from .zfs import tasks as zfs_tasks

__all__ = ["cluster_backups_tasks", "service_backups_tasks", "storage_sweep", "zfs_tasks"]


@shared_task(name="backups_app.tasks.storage_sweep")
def storage_sweep() -> int:
    """Run by beat every six hours: orphan objects and unfinished uploads past the grace
    period are removed (backups_app/sweep.py); returns how many."""
    result = sweep.storage_sweep(apply=True)
    return len(result.orphans) - len(result.failed) + len(result.unfinished)
