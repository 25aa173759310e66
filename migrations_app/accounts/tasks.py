"""Account tasks: dedupe runs (merge or undo) and quota runs, one shape, keyed on a run id
(fleet_app.runs.RunTask claims the run, retries transient errors with backoff and fails
the row when it gives up).

Each keeps the name it was released under, so queued messages still find it.
"""

from celery import shared_task

from fleet_app.runs import RunTask, run_execute

from . import quotas, services
from .models import DedupeRun, QuotaRun


@shared_task(
    base=RunTask,
    bind=False,
    name="migrations_app.tasks_accounts.dedupe_run_execute",
    run_model="migrations_app.DedupeRun",
)
def dedupe_run_execute(run_id: int, queue: str | None = None):
    return run_execute(DedupeRun, run_id, services.dedupe_run_work, queue=queue)


@shared_task(
    base=RunTask,
    bind=False,
    name="migrations_app.tasks_accounts.quota_run_execute",
    run_model="migrations_app.QuotaRun",
)
def quota_run_execute(run_id: int, queue: str | None = None):
    # ``queue``: messages already queued name the queue they were sent to; one run, no chain.
    return run_execute(QuotaRun, run_id, quotas.quota_run_work)
