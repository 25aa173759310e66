"""Task names are a contract: beat rows and queued messages name them. Every name a
release has registered stays registered, whatever module the task moves to, and every run
model names a task that is registered."""

import pytest
from celery import current_app

from fleet_app.runs import run_models

# Every task name released so far. A task may move or be renamed in code; its old name
# stays registered (``name=`` on the task) so nothing already queued or scheduled is lost.
RELEASED = [
    "backups_app.cluster_backups.tasks.cluster_backups_prune_recent",
    "backups_app.tasks.backup_run_execute",
    "backups_app.tasks.backup_schedule_run",
    "backups_app.tasks.restore_drills_start",
    "backups_app.tasks.restore_run_execute",
    "backups_app.tasks.storage_sweep",
    "backups_app.zfs.tasks.divergence_fix_apply",
    "backups_app.zfs.tasks.replication_job_assess",
    "backups_app.zfs.tasks.replication_run_execute",
    "backups_app.zfs.tasks.snapshot_run_execute",
    "backups_app.zfs.tasks.storage_host_check",
    "backups_app.zfs.tasks.zfs_tick",
    "fleet_app.tasks.api_tokens_purge_expired",
    "fleet_app.tasks.fleet_prune_history",
    "fleet_app.tasks.inventory_inbox_drain",
    "fleet_app.tasks.runs_reap",
    "migrations_app.tasks.mapping_import_run_execute",
    "migrations_app.tasks.mapping_uploads_expire",
    "migrations_app.tasks.rotation_run_execute",
    "migrations_app.tasks_accounts.dedupe_run_execute",
    "migrations_app.tasks_accounts.quota_run_execute",
]


@pytest.fixture(scope="module")
def registered():
    current_app.loader.import_default_modules()
    return set(current_app.tasks)


@pytest.mark.parametrize("name", RELEASED)
def test_a_released_task_name_is_still_registered(registered, name):
    assert name in registered


@pytest.mark.parametrize("model", run_models(), ids=lambda m: m._meta.label)
def test_every_run_model_names_a_registered_task(registered, model):
    assert model.task_name in registered, f"{model._meta.label}.task_name"


def test_every_beat_entry_names_a_registered_task(registered, settings):
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in registered
