"""Run rows: the state of long work, shared by every app.

A view or command writes a run row in ``pending``, enqueues a task with the run's id after
the transaction commits, and answers with the id. The task claims the row, writes its
progress to it and finishes it; the admin, the API and the dashboards read only the row.
A concrete run model subclasses ``Run`` and adds what its job needs.

Phases follow Velero's: ``pending → running → succeeded | partially_failed | failed``.
"""

import datetime as dt
import logging
import math
import threading
import time

from celery import Task
from django.apps import apps
from django.conf import settings
from django.db import OperationalError, models, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

logger = logging.getLogger(__name__)


class RunState(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    PARTIALLY_FAILED = "partially_failed", "Partially failed"
    FAILED = "failed", "Failed"


FINISHED_STATES = (RunState.SUCCEEDED, RunState.PARTIALLY_FAILED, RunState.FAILED)


class Run(models.Model):
    """Abstract run row: state, phase, progress counts, error and a short log."""

    state = models.CharField(
        max_length=16, choices=RunState.choices, default=RunState.PENDING, db_index=True
    )
    phase = models.CharField(max_length=64, blank=True)
    total = models.PositiveBigIntegerField(default=0)
    done = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    log = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Each write of progress touches this, so a stuck run (a dead worker) is visible.
    updated_at = models.DateTimeField(default=timezone.now)

    # The name of the task that works this kind of run (run_enqueue sends it).
    task_name: str = ""

    class Meta:
        abstract = True

    @property
    def percent(self) -> int:
        return (
            100
            if self.state in FINISHED_STATES and not self.total
            else (int(100 * self.done / self.total) if self.total else 0)
        )

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES


def run_claim(run: Run) -> bool:
    """Move a run to ``running``; False if it already finished (a duplicate delivery).

    A run found ``running`` is claimed again: with ``acks_late`` a task whose worker died
    is delivered anew, and it must pick up where the row says it was.
    """
    now = timezone.now()
    claimed = (
        type(run)
        ._default_manager.filter(pk=run.pk, state__in=(RunState.PENDING, RunState.RUNNING))
        .update(
            state=RunState.RUNNING, started_at=Coalesce("started_at", Value(now)), updated_at=now
        )
    )
    if claimed:
        run.refresh_from_db()
    return bool(claimed)


def run_progress(
    run: Run, *, done: int = 0, failed: int = 0, phase: str | None = None, total: int | None = None
) -> None:
    """Add to the counters with F() so concurrent chunks never overwrite each other."""
    fields: dict = {
        "done": F("done") + done,
        "failed": F("failed") + failed,
        "updated_at": timezone.now(),
    }
    if phase is not None:
        fields["phase"] = phase
    if total is not None:
        fields["total"] = total
    type(run)._default_manager.filter(pk=run.pk).update(**fields)


def run_log(run: Run, line: str) -> None:
    """Append one line to the run's log (kept short: the last 64 KiB)."""
    with transaction.atomic():
        row = type(run)._default_manager.select_for_update().only("log").get(pk=run.pk)
        log = (row.log + f"{timezone.now():%Y-%m-%d %H:%M:%S} {line}\n")[-65536:]
        type(run)._default_manager.filter(pk=run.pk).update(log=log, updated_at=timezone.now())


def run_finish(run: Run, *, error: str = "") -> str:
    """Finish a run: failed on error, partially_failed if some items failed, else succeeded."""
    row = type(run)._default_manager.only("failed", "done").get(pk=run.pk)
    if error:
        state = RunState.FAILED
    elif row.failed:
        state = RunState.PARTIALLY_FAILED if row.done else RunState.FAILED
    else:
        state = RunState.SUCCEEDED
    now = timezone.now()
    type(run)._default_manager.filter(pk=run.pk).update(
        state=state, error=error[:10000], finished_at=now, updated_at=now
    )
    run.refresh_from_db()
    return state


def run_wait(run: Run, *, on_phase=None, poll_seconds: float = 0.5) -> Run:
    """Poll a run row until it finishes; call ``on_phase(run)`` whenever its phase changes.

    For commands that start a job and wait for it; the row is the only thing they read.
    """
    last_phase = None
    while True:
        run.refresh_from_db()
        if on_phase is not None and run.phase != last_phase:
            on_phase(run)
            last_phase = run.phase
        if run.is_finished:
            return run
        time.sleep(poll_seconds)


def run_models() -> list[type[Run]]:
    """Every concrete run model of every app."""
    return [model for model in apps.get_models() if issubclass(model, Run)]


def runs_reap(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Fail the runs no worker has touched for ``RUN_STALE_HOURS``; returns how many of each.

    A run is pending until a worker claims it and running until it finishes, and every
    step writes ``updated_at``. One that has not moved for that long lost its worker for
    good: its message vanished with a broker that keeps nothing on disk, or it was
    redelivered and died again. Left alone it would look busy forever and a command
    following it would wait forever; failed, it says so and can be started again. A
    message that still arrives later finds it finished and does nothing (``run_claim``).
    """
    now = now or timezone.now()
    hours = settings.RUN_STALE_HOURS
    reaped = {}
    for model in run_models():
        count = model._default_manager.filter(
            state__in=(RunState.PENDING, RunState.RUNNING),
            updated_at__lt=now - dt.timedelta(hours=hours),
        ).update(
            state=RunState.FAILED,
            error=f"No worker has touched this run for {hours} hours: its worker or its "
            "queued message was lost. Start it again.",
            finished_at=now,
            updated_at=now,
        )
        if count:
            logger.warning("failed %d stale %s run(s)", count, model._meta.label)
            reaped[model._meta.label] = count
    return reaped


# --- Enqueueing and running: one shape for every task ---------------------------------------

# Errors a later attempt can get past (a database or broker that blinked, a peer that
# reset the connection): a run task retries these with backoff and jitter; anything else
# fails its row at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    ConnectionError,
    TimeoutError,
)


# Celery's autodiscovery runs once: a second thread asking while the first is still
# importing would find it done and the task not registered yet (a 500 after the commit).
_tasks_import = threading.Lock()


def _task(name: str):
    """The registered task called ``name``, importing every app's task modules once if it
    is not known yet (a web process has not needed them before)."""
    from celery import current_app

    task = current_app.tasks.get(name)
    if task is None:
        with _tasks_import:
            current_app.loader.import_default_modules()
            task = current_app.tasks.get(name)
    if task is None:
        raise LookupError(f"No task is registered as {name!r}.")
    return task


def task_enqueue(name: str, *args, queue: str | None = None, **kwargs) -> None:
    """Send the task ``name`` once the current transaction commits (at once outside one).

    By name, so a service never imports its tasks module and the two cannot import each
    other; in the embedded default (no broker) the task runs in-process, after commit.
    """
    options = {"queue": queue} if queue else {}
    transaction.on_commit(lambda: _task(name).apply_async(args=args, kwargs=kwargs, **options))


_nudged: dict[str, float] = {}


def task_nudge(name: str, *, every: float) -> None:
    """Have the task ``name`` run after the current transaction commits, for work that
    waits in the database (a queue table such as the inventory inbox) and that the task
    takes from there whatever sent it.

    In the embedded default (no broker) the task runs in-process on every call. With a
    broker it is sent at most once per ``every`` seconds by this process, and a broker
    that cannot take it is logged, never raised: the work is already durable, and beat's
    sweep of the same task picks it up once the broker is back.
    """

    from celery import current_app

    eager = current_app.conf.task_always_eager
    if not eager and time.monotonic() - _nudged.get(name, -math.inf) < every:
        return  # sent less than ``every`` ago: not even a commit hook (the collect path)

    def send() -> None:
        task = _task(name)
        if eager:
            try:
                task.apply()
            except Exception:
                logger.exception("%s failed in-process; beat's sweep will retry it", name)
            return
        now = time.monotonic()
        if now - _nudged.get(name, -math.inf) < every:
            return
        _nudged[name] = now
        try:
            task.apply_async(retry=False)
        except Exception as error:
            logger.warning("could not send %s (%s); beat's sweep will send it", name, error)

    transaction.on_commit(send)


def run_enqueue(run: "Run", *, queue: str | None = None, **kwargs) -> None:
    """Send the task the run's model names (``task_name``) for this run, after commit."""
    task_enqueue(type(run).task_name, run.pk, queue=queue, **kwargs)


def run_fail(model: type["Run"], run_id: int, error: BaseException | str) -> None:
    """Fail an unfinished run (the row says why); a finished one is left as it is."""
    now = timezone.now()
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    model._default_manager.filter(pk=run_id).exclude(state__in=FINISHED_STATES).update(
        state=RunState.FAILED, error=text[:10000], finished_at=now, updated_at=now
    )


class RunTask(Task):
    """The base of every task that works a run row (``run_model``, first argument the
    run's id): late acknowledgement, Celery's own retry of transient errors with
    exponential backoff and jitter, and the row failed when the task gives up."""

    abstract = True
    acks_late = True
    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 5
    run_model = ""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        if self.run_model and args:
            run_fail(apps.get_model(self.run_model), args[0], exc)


def run_execute(model: type["Run"], run_id: int, service, **kwargs):
    """The body of a run task: claim the row (a duplicate delivery of a finished run does
    nothing), call ``service(run=run, **kwargs)``. Transient errors propagate (the task
    retries); any other error fails the row and propagates."""
    run = model._default_manager.filter(pk=run_id).first()
    if run is None:
        logger.warning("%s %s does not exist; nothing to do", model._meta.label, run_id)
        return None
    if not run_claim(run):
        return run.state
    try:
        return service(run=run, **kwargs)
    except TRANSIENT_ERRORS:
        raise
    except Exception as error:
        run_fail(model, run_id, error)
        raise
