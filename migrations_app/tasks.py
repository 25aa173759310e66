"""Cutover tasks: thin wrappers around the services, idempotent, keyed on a run id."""

import logging
import random
import time

from celery import shared_task
from django.db import OperationalError

from fleet_app.runs import RunState, run_claim

from . import rotation
from .models import RotationRun

logger = logging.getLogger(__name__)

# Transient database errors (a failover, a deadlock with a client confirming its
# credentials) are retried this many times, waiting 2, 4, 8 … seconds up to the cap.
ROTATION_MAX_RETRIES = 8
ROTATION_BACKOFF_CAP = 120


def _backoff(retries: int) -> float:
    base = min(ROTATION_BACKOFF_CAP, 2 ** (retries + 1))
    return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not a secret


@shared_task(bind=True, acks_late=True, max_retries=ROTATION_MAX_RETRIES)
def rotation_run_execute(self, run_id: int, queue: str | None = None) -> None:
    """Claim the run, re-key one chunk, then enqueue the next chunk or finish the run.

    One chunk per message keeps each message short (Redis redelivers an unacknowledged
    message after the visibility timeout, which must exceed one chunk, not the run). A
    redelivered or duplicate message is harmless: a finished run is a no-op and a chunk
    only ever takes mappings after the committed cursor. Run eagerly (no broker), it loops
    over the chunks instead of recursing, and waits out transient errors in place.
    """
    options = {"queue": queue} if queue else {}
    attempt = self.request.retries
    while True:
        try:
            _step(self, run_id, queue, options)
            return
        except OperationalError as error:
            if attempt >= self.max_retries:
                _fail(run_id, f"database error, gave up after {attempt} retries: {error}")
                raise
            countdown = _backoff(attempt)
            logger.warning("rotation run %s: %s; retry in %.0f s", run_id, error, countdown)
            if not self.request.is_eager:
                raise self.retry(exc=error, countdown=countdown, **options) from error
            # Eagerly, Celery would hand the Retry to the caller instead of running again.
            time.sleep(countdown)
            attempt += 1
        except Exception as error:
            _fail(run_id, f"{type(error).__name__}: {error}")
            raise


def _step(task, run_id: int, queue: str | None, options: dict) -> None:
    run = RotationRun.objects.filter(pk=run_id).first()
    if run is None or run.is_finished:
        return
    # Claim once: a running run is the chain continuing (or a redelivery), and claiming
    # again would move started_at.
    if run.state == RunState.PENDING and not run_claim(run):
        return
    more = rotation.rotation_run_execute_chunk(run_id=run_id)
    while more and task.request.is_eager:
        more = rotation.rotation_run_execute_chunk(run_id=run_id)
    if more:
        # A broker error here fails the run rather than leaving it "running" with no
        # message left to continue it.
        task.apply_async(args=(run_id,), kwargs={"queue": queue}, **options)
    else:
        rotation.rotation_run_finish(run_id=run_id)


def _fail(run_id: int, error: str) -> None:
    try:
        rotation.rotation_run_fail(run_id=run_id, error=error)
    except Exception:
        # The database may be what failed; the run row then shows a stale updated_at.
        logger.exception("rotation run %s: could not record the failure", run_id)
