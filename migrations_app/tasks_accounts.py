"""Account jobs: dedupe (merge or undo) and quota runs; thin wrappers keyed on a run id.

Celery autodiscovers only ``tasks.py``; this module is listed in ``CELERY_IMPORTS``.
"""

import logging
import random

from celery import shared_task
from django.db import OperationalError

from fleet_app.locks import LockHeld, named_lock
from fleet_app.runs import RunState, run_claim

from . import accounts
from .models import DedupeRun

logger = logging.getLogger(__name__)

MAX_RETRIES = 8
BACKOFF_CAP = 120
# While a dedupe_users command holds the lock, the job waits this long between tries.
LOCK_RETRY_SECONDS = 30


def _backoff(retries: int) -> float:
    base = min(BACKOFF_CAP, 2 ** (retries + 1))
    return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not a secret


@shared_task(bind=True, acks_late=True, max_retries=MAX_RETRIES)
def dedupe_run_execute(self, run_id: int, queue: str | None = None) -> None:
    """Claim the run, do one chunk of groups, then enqueue the next chunk or finish.

    The checkpoint is written by the first chunk, before any change. A redelivered or
    duplicate message is harmless: a finished run is a no-op, and each group advances
    the cursor in its own transaction. Run eagerly, it loops over the chunks in place.
    """
    options = {"queue": queue} if queue else {}
    run = DedupeRun.objects.filter(pk=run_id).first()
    if run is None or run.is_finished:
        return
    if run.state == RunState.PENDING and not run_claim(run):
        return
    try:
        with named_lock("dedupe_users"):
            more = accounts.dedupe_run_step(run_id=run_id)
            while more and self.request.is_eager:
                more = accounts.dedupe_run_step(run_id=run_id)
    except LockHeld:
        if self.request.is_eager or self.request.retries >= self.max_retries:
            accounts.dedupe_run_fail(
                run_id=run_id, error="Another dedupe (a dedupe_users command) holds the lock."
            )
            return
        raise self.retry(countdown=LOCK_RETRY_SECONDS, **options) from None
    except OperationalError as error:
        if self.request.is_eager or self.request.retries >= self.max_retries:
            accounts.dedupe_run_fail(run_id=run_id, error=f"database error: {error}")
            raise
        countdown = _backoff(self.request.retries)
        logger.warning("dedupe run %s: %s; retry in %.0f s", run_id, error, countdown)
        raise self.retry(exc=error, countdown=countdown, **options) from error
    except Exception as error:
        accounts.dedupe_run_fail(run_id=run_id, error=f"{type(error).__name__}: {error}")
        raise
    if more:
        self.apply_async(args=(run_id,), kwargs={"queue": queue}, **options)
    else:
        accounts.dedupe_run_finish(run_id=run_id)


@shared_task(bind=True, acks_late=True, max_retries=MAX_RETRIES)
def quota_run_execute(self, run_id: int, queue: str | None = None) -> None:
    """Verify, sync or reset quota usage and store the result in the run row.

    Holds the same lock as ``manage.py quotas``; a finished run is a no-op, so a
    redelivered message does nothing twice.
    """
    options = {"queue": queue} if queue else {}
    try:
        with named_lock("quotas"):
            accounts.quota_run_execute(run_id=run_id)
    except LockHeld:
        if self.request.is_eager or self.request.retries >= self.max_retries:
            accounts.quota_run_fail(run_id=run_id, error="A quotas command holds the lock.")
            return
        raise self.retry(countdown=LOCK_RETRY_SECONDS, **options) from None
