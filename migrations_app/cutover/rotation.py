"""Bulk rotation: staff re-key the native credentials of many legacy mappings at once.

A run row (``RotationRun``) holds the selection (``filters``), the progress and a cursor;
``rotation_run_work`` (run by the task) works through the matching mappings in primary-key
chunks, one chunk per task message. Each chunk is one transaction that re-keys the
systems, stamps the mappings and advances the cursor together, so a worker killed in the
middle of a chunk leaves nothing behind and the redelivered message redoes the chunk
exactly once.

Only mappings whose native credentials are not in use are re-keyed: not confirmed, not
released, not asked for within the last ``ROTATION_GRACE_MINUTES`` (``last_attempt_at``:
any ``/proxy/credentials`` call), and whose system is
neither suspended nor deleted. The fresh secret is not
kept anywhere (only its digest): a client fetches its credentials through
``/proxy/credentials``, which issues yet another one, and whatever secret was handed out
earlier and never used stops working.

Filters (all optional, stored as given after validation):

``organization``        an organization id; its whole subtree is selected
``legacy_prefix``       legacy_system_id starts with this text
``only_never_rotated``  true: only mappings never rotated before
``created_before``      an ISO date: mappings created before that day (UTC)
``ids``                 a list of mapping ids (the admin action)
``max_id``              set by ``rotation_run_start``: mappings created after the run
                        started are not part of it
"""

import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.dateparse import parse_date

from fleet_app import credentials, pending_secrets
from fleet_app import services as fleet
from fleet_app.errors import InvalidInput
from fleet_app.models import Organization, System, User
from fleet_app.runs import (
    FINISHED_STATES,
    TRANSIENT_ERRORS,
    RunState,
    run_finish,
    run_log,
    task_enqueue,
)

from .models import LegacyMapping, RotationRun
from .services import counters_bump

logger = logging.getLogger(__name__)

CHUNK_SIZE_MAX = 10_000
FILTER_KEYS = ("organization", "legacy_prefix", "only_never_rotated", "created_before", "ids")
# Progress is logged about this many times over a run, not once per chunk.
LOG_STEPS = 10


# --- Filters --------------------------------------------------------------------------------


def _whole(value: Any, *, minimum: int = 1) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and value >= minimum else None


def rotation_filters_clean(filters: Any) -> dict[str, Any]:
    """Validate a selection and return its JSON-safe form; ``InvalidInput`` if it is bad.

    ``None`` and empty text mean "no such filter", so a form can pass its blank fields.
    """
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        raise InvalidInput("The filters must be a mapping of filter names to values.")
    unknown = sorted(set(filters) - set(FILTER_KEYS) - {"max_id"})
    if unknown:
        raise InvalidInput(f"Unknown filter {unknown[0]!r}; use {', '.join(FILTER_KEYS)}.")
    cleaned: dict[str, Any] = {}
    present = {k: v for k, v in filters.items() if v is not None and v != ""}

    if "organization" in present:
        org_id = _whole(present["organization"])
        if org_id is None:
            raise InvalidInput("The organization filter must be an organization id.")
        if not Organization.objects.filter(pk=org_id).exists():
            raise InvalidInput(f"Organization {org_id} does not exist.")
        cleaned["organization"] = org_id

    if "legacy_prefix" in present:
        prefix = present["legacy_prefix"]
        if not isinstance(prefix, str) or len(prefix) > 128:
            raise InvalidInput("The legacy id prefix must be text of at most 128 characters.")
        cleaned["legacy_prefix"] = prefix

    if "only_never_rotated" in present:
        if not isinstance(present["only_never_rotated"], bool):
            raise InvalidInput("only_never_rotated must be true or false.")
        if present["only_never_rotated"]:
            cleaned["only_never_rotated"] = True

    if "created_before" in present:
        raw = present["created_before"]
        if isinstance(raw, dt.datetime):
            raise InvalidInput("created_before must be a date (YYYY-MM-DD), not a date-time.")
        day = raw if isinstance(raw, dt.date) else None
        if day is None and isinstance(raw, str):
            try:
                day = parse_date(raw.strip())
            except ValueError:
                day = None
        if day is None:
            raise InvalidInput(f"created_before {raw!r} is not a date in the form YYYY-MM-DD.")
        cleaned["created_before"] = day.isoformat()

    if "ids" in present:
        raw_ids = present["ids"]
        if not isinstance(raw_ids, list | tuple):
            raise InvalidInput("The ids filter must be a list of mapping ids.")
        ids = [_whole(value) for value in raw_ids]
        if not ids or None in ids:
            raise InvalidInput("The ids filter must be a non-empty list of mapping ids.")
        cleaned["ids"] = sorted(set(ids))

    if "max_id" in present:
        max_id = _whole(present["max_id"], minimum=0)
        if max_id is None:
            raise InvalidInput("max_id must be a mapping id.")
        cleaned["max_id"] = max_id
    return cleaned


def rotation_candidates(filters: dict[str, Any]) -> QuerySet[LegacyMapping]:
    """The mappings a run with these (cleaned) filters re-keys, in no particular order."""
    queryset = LegacyMapping.objects.filter(
        confirmed_at__isnull=True,
        released_at__isnull=True,
        system__suspended_at__isnull=True,
        system__deleted_at__isnull=True,
    ).exclude(
        # A cluster that fetched its pair moments ago may not have used it yet, and ns8's
        # migrate-to-my never asks again once it has stored one: re-keying it now would
        # lock it out for good.
        last_attempt_at__gte=timezone.now() - dt.timedelta(minutes=settings.ROTATION_GRACE_MINUTES)
    )
    if org_id := filters.get("organization"):
        path = Organization.objects.filter(pk=org_id).values_list("path", flat=True).first()
        if path is None:
            raise InvalidInput(f"Organization {org_id} does not exist.")
        # Organization.path index: the subtree is one prefix match.
        queryset = queryset.filter(system__organization__path__startswith=path)
    if prefix := filters.get("legacy_prefix"):
        queryset = queryset.filter(legacy_system_id__startswith=prefix)
    if filters.get("only_never_rotated"):
        queryset = queryset.filter(rotated_at__isnull=True)
    if before := filters.get("created_before"):
        start_of_day = dt.datetime.combine(dt.date.fromisoformat(before), dt.time.min)
        queryset = queryset.filter(created_at__lt=timezone.make_aware(start_of_day))
    if (ids := filters.get("ids")) is not None:
        queryset = queryset.filter(pk__in=ids)
    if (max_id := filters.get("max_id")) is not None:
        queryset = queryset.filter(pk__lte=max_id)
    return queryset


# --- Runs -----------------------------------------------------------------------------------


def _chunk_enqueue(run: RotationRun, queue: str | None) -> None:
    # The queue goes twice: as the task's second argument, so the chunk after this one is
    # sent to it as well, and as the routing of this message. By default the routes decide.
    task_enqueue(RotationRun.task_name, run.pk, queue, queue=queue)


@transaction.atomic
def rotation_run_start(
    *,
    actor: User | None,
    filters: dict,
    chunk_size: int = 1000,
    queue: str | None = None,
) -> RotationRun:
    """Create a pending run over the matching mappings and enqueue it after commit.

    ``queue`` sends the task (and every chunk after it) to a named Celery queue; by
    default the task routes decide.
    """
    cleaned = rotation_filters_clean(filters)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise InvalidInput("The chunk size must be a whole number.")
    if not 1 <= chunk_size <= CHUNK_SIZE_MAX:
        raise InvalidInput(f"The chunk size must be between 1 and {CHUNK_SIZE_MAX}.")
    if "ids" not in cleaned and "max_id" not in cleaned:
        # Mappings imported while the run works are not part of what staff asked for.
        top = LegacyMapping.objects.order_by("-pk").values_list("pk", flat=True).first()
        cleaned["max_id"] = top or 0
    total = rotation_candidates(cleaned).count()
    run = RotationRun.objects.create(
        filters=cleaned,
        chunk_size=chunk_size,
        total=total,
        phase="queued",
        created_by=actor if actor is not None and actor.pk else None,
    )
    organization = None
    if org_id := cleaned.get("organization"):
        organization = Organization.objects.get(pk=org_id)
    fleet.audit_record(
        actor=actor,
        action="mapping.bulk_rotate",
        obj=run,
        organization=organization,
        after={"filters": cleaned, "total": total, "chunk_size": chunk_size},
    )
    run_log(
        run,
        f"queued by {actor if actor is not None else 'system'}: {total} mapping(s) match, "
        f"chunks of {chunk_size}",
    )
    _chunk_enqueue(run, queue)
    return run


def _systems_rekey(system_ids: list[int]) -> None:
    """Give each system a fresh secret; only its digest is written, the secret is dropped.
    The secrets pending for them (handed out, never used) are revoked with it."""
    pending_secrets.revoke(system_ids=system_ids)
    public_parts, digests = [], []
    for _ in system_ids:
        public, secret = credentials.system_secret_generate()
        public_parts.append(public)
        digests.append(credentials.digest(secret))
    if connection.vendor == "postgresql":
        # One statement for the whole chunk: bulk_update's CASE WHEN over 1000 rows took
        # about ten times longer (60-90 ms against 730-890 ms, bench/rotation.py's data).
        table = connection.ops.quote_name(System._meta.db_table)
        columns = {
            name: connection.ops.quote_name(System._meta.get_field(name).column)
            for name in ("id", "secret_public", "secret_digest", "secret_confirmed_at")
        }
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS s SET {columns['secret_public']} = v.public, "  # noqa: S608 - names from the model, values bound
                f"{columns['secret_digest']} = v.digest, "
                f"{columns['secret_confirmed_at']} = NULL "
                f"FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(id, public, digest) "
                f"WHERE s.{columns['id']} = v.id",
                [system_ids, public_parts, digests],
            )
        return
    System.objects.bulk_update(
        [
            System(pk=pk, secret_public=public, secret_digest=digest, secret_confirmed_at=None)
            for pk, public, digest in zip(system_ids, public_parts, digests, strict=True)
        ],
        ["secret_public", "secret_digest", "secret_confirmed_at"],
        batch_size=500,
    )


def rotation_run_execute_chunk(*, run_id: int) -> bool:
    """Re-key the next chunk of a running run in one transaction; True if more may remain.

    The run row is locked for the whole chunk, so two deliveries of the same message (a
    worker that died after committing but before acknowledging) never work on the same
    chunk: the second sees the advanced cursor. Mappings are locked too, so a concurrent
    ``/proxy/credentials`` or first use of the credentials waits for the chunk and the
    chunk re-checks that they still qualify.
    """
    with transaction.atomic():
        run = RotationRun.objects.select_for_update().get(pk=run_id)
        if run.state != RunState.RUNNING:
            return False
        rows = list(
            rotation_candidates(rotation_filters_clean(run.filters))
            .filter(pk__gt=run.cursor)
            .exclude(last_rotation_run_id=run.pk)
            .order_by("pk")
            .select_for_update(of=("self",))
            .values_list("pk", "system_id", "rotated_at")[: run.chunk_size]
        )
        if not rows:
            return False
        now = timezone.now()
        _systems_rekey([system_id for _, system_id, _ in rows])
        ids = [pk for pk, _, _ in rows]
        LegacyMapping.objects.filter(pk__in=ids).update(
            rotated_at=Coalesce(F("rotated_at"), Value(now)),
            rotation_count=F("rotation_count") + 1,
            last_rotation_run_id=run.pk,
        )
        # The day's counter row is the hottest row here: take its lock last.
        counters_bump(rotated=sum(1 for _, _, rotated_at in rows if rotated_at is None))
        done = run.done + len(rows)
        RotationRun.objects.filter(pk=run.pk).update(
            cursor=ids[-1], done=done, phase="rotating", updated_at=now
        )
        step = max(1, run.total // LOG_STEPS)
        if run.done == 0 or run.done // step != done // step:
            run_log(run, f"rotated {done}/{run.total} (up to mapping {ids[-1]})")
    return len(rows) == run.chunk_size


@transaction.atomic
def rotation_run_finish(*, run_id: int) -> RotationRun:
    """Close a running run once no chunk remains (a no-op if it is already finished)."""
    run = RotationRun.objects.select_for_update().get(pk=run_id)
    if run.state in FINISHED_STATES:
        return run
    skipped = max(0, run.total - run.done)
    line = f"finished: rotated {run.done} of {run.total} mapping(s) counted at the start"
    if skipped:
        line += f"; {skipped} no longer qualified (confirmed, released or suspended meanwhile)"
    run_log(run, line)
    RotationRun.objects.filter(pk=run.pk).update(phase="done")
    run_finish(run)
    return run


def rotation_run_work(*, run: RotationRun, queue: str | None = None) -> str:
    """Re-key one chunk of a claimed run, then send the next chunk or finish the run.

    One chunk per message keeps each message short (Redis redelivers an unacknowledged
    message after the visibility timeout, which must exceed one chunk, not the run). A
    redelivered or duplicate message is harmless: a chunk only ever takes mappings after
    the committed cursor. Without a broker (tasks run in-process) the chunks are looped
    here, since a message per chunk would recurse once per chunk.
    """
    try:
        more = rotation_run_execute_chunk(run_id=run.pk)
        while more and settings.CELERY_TASK_ALWAYS_EAGER:
            more = rotation_run_execute_chunk(run_id=run.pk)
    except TRANSIENT_ERRORS:
        raise  # the task retries; what was committed stays, chunks are atomic
    except Exception as error:
        rotation_run_fail(run_id=run.pk, error=f"{type(error).__name__}: {error}")
        raise
    if more:
        _chunk_enqueue(run, queue)
        return RunState.RUNNING
    return rotation_run_finish(run_id=run.pk).state


def rotation_run_fail(*, run_id: int, error: str) -> None:
    """Mark a run failed with ``error`` (what was committed stays: chunks are atomic)."""
    with transaction.atomic():
        run = RotationRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.state in FINISHED_STATES:
            return
        run_log(run, f"failed: {error}")
        RotationRun.objects.filter(pk=run.pk).update(phase="failed")
        run_finish(run, error=error)
