"""Inventories: the documents systems send, accepted into the inbox on the request and
recorded (parsed, diffed, fingerprinted) by the batch drains; ``fleet_app.services``
exposes the same names."""

import datetime as dt
import hashlib
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from . import inventory_diff, runs
from .db import bound_cursor
from .errors import InvalidInput
from .models import (
    Inventory,
    InventoryChange,
    InventoryInbox,
    System,
)
from .signals import inventory_received

logger = logging.getLogger(__name__)

# Fields never copied into an audit entry in clear.
_MASKED_FIELDS = ("password", "secret", "digest", "token")

# --- Inventories ----------------------------------------------------------------------------


def _leader_node(facts: dict) -> dict:
    nodes = facts.get("nodes")
    if isinstance(nodes, dict):
        candidates = [n for n in nodes.values() if isinstance(n, dict)]
    elif isinstance(nodes, list):
        candidates = [n for n in nodes if isinstance(n, dict)]
    else:
        candidates = []
    for node in candidates:
        if node.get("cluster_leader") is True or node.get("leader") is True:
            return node
    if isinstance(nodes, dict) and isinstance(nodes.get("1"), dict):
        return nodes["1"]
    return candidates[0] if candidates else {}


def _text(value: Any, limit: int) -> str:
    return value.strip()[:limit] if isinstance(value, str) else ""


def _address(value: Any, version: int) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value.split("/")[0])
    except ValueError:
        return None
    return str(address) if address.version == version else None


# A phonehome document nests about six levels; far deeper is not one, and would exhaust the
# recursion of the change detection.
INVENTORY_MAX_DEPTH = 64


def _inventory_storable(payload: dict) -> None:
    """Refuse a document nested beyond ``INVENTORY_MAX_DEPTH`` or holding text that no
    database column can keep: NUL (PostgreSQL refuses it) or an unpaired surrogate (not
    UTF-8). One walk, without recursion."""
    pending: list[tuple[Any, int]] = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > INVENTORY_MAX_DEPTH:
            raise InvalidInput(f"The inventory nests deeper than {INVENTORY_MAX_DEPTH} levels.")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            for text in (key, item):
                if isinstance(text, str) and ("\x00" in text or not _utf8(text)):
                    raise InvalidInput(
                        "The inventory holds a NUL character or an unpaired surrogate."
                    )
            if isinstance(item, dict | list):
                pending.append((item, depth + 1))


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inventory_validate(payload: Any, *, text_checked: bool = False) -> dict:
    """Refuse what is not an ns8 phonehome document, with one sentence saying why.

    ``text_checked``: the strings are known to hold neither NUL nor an unpaired surrogate
    (``inventory_parse`` knows it from the bytes), so only the nesting is walked.
    """
    if not isinstance(payload, dict):
        raise InvalidInput("The inventory must be a JSON object.")
    if text_checked:
        _inventory_depth_check(payload)
    else:
        _inventory_storable(payload)
    facts = payload.get("facts")
    if not isinstance(facts, dict):
        raise InvalidInput("The inventory must carry a 'facts' object.")
    for key in ("cluster", "nodes"):
        if key in facts and facts[key] is not None and not isinstance(facts[key], dict | list):
            raise InvalidInput(f"facts.{key} must be an object.")
    migration = facts.get("migration")
    if migration is not None and not isinstance(migration, dict):
        raise InvalidInput("facts.migration must be an object or null.")
    return payload


_CONTAINERS = frozenset((dict, list))


def _inventory_depth_check(payload: dict) -> None:
    """Refuse a document nested beyond ``INVENTORY_MAX_DEPTH``: a walk over its objects
    and lists one level at a time, without recursion. Each level's containers are picked
    by a comprehension over exact types (orjson builds only dict and list), which is about
    eight times faster than a loop over every value: on the request path this walk was the
    largest cost after the INSERT."""
    level: list = [payload]
    for _ in range(INVENTORY_MAX_DEPTH):
        below: list = []
        for value in level:
            items = value.values() if type(value) is dict else value
            below += [item for item in items if type(item) in _CONTAINERS]
        if not below:
            return
        level = below
    raise InvalidInput(f"The inventory nests deeper than {INVENTORY_MAX_DEPTH} levels.")


# The escape by which JSON text carries a NUL; orjson itself refuses unpaired surrogates
# and invalid UTF-8, so a body without this byte sequence needs no walk over its strings.
_NUL_ESCAPE = b"\\u0000"


def inventory_parse(body: bytes) -> dict:
    """Parse an inventory body and check it is a phonehome document within the limits.

    What the collect API does before it accepts a body, and what the drain does again
    before it records one: orjson (a tenth of the standard parser's time on a 50 KB
    document), then the shape and the depth.
    """
    if not body.strip():
        raise InvalidInput("The inventory body is empty.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        reason = str(error)
        if "depth limit" in reason:
            raise InvalidInput("The inventory nests too deeply to be read.") from None
        if "surrogate in string" in reason:
            raise InvalidInput(
                "The inventory holds a NUL character or an unpaired surrogate."
            ) from None
        raise InvalidInput("The inventory is not valid JSON.") from None
    return inventory_validate(payload, text_checked=_NUL_ESCAPE not in body)


def _system_fields_from(payload: dict) -> dict[str, Any]:
    """Fields copied onto the system from the leader node; empty values never overwrite."""
    facts = payload["facts"]
    leader = _leader_node(facts)
    cluster = facts.get("cluster") if isinstance(facts.get("cluster"), dict) else {}
    fields = {
        "type": _text(payload.get("installation"), 64),
        # The cluster's own name: staff's ``name`` is never overwritten by an inventory.
        "ui_name": _text(cluster.get("ui_name"), 255) or _text(leader.get("ui_name"), 255),
        "fqdn": _text(leader.get("fqdn"), 255),
        "version": _text(leader.get("version"), 64) or _text(cluster.get("version"), 64),
        "ipv4_address": _address(
            leader.get("default_ipv4") or leader.get("public_ip") or leader.get("ipv4"), 4
        ),
        "ipv6_address": _address(leader.get("default_ipv6") or leader.get("ipv6"), 6),
    }
    return {k: v for k, v in fields.items() if v}


def inventory_ingest(
    *,
    system: System,
    payload: Any,
    size: int,
    received_at: dt.datetime | None = None,
    body_digest: str = "",
    checked: bool = False,
) -> Inventory:
    """Store an inventory, copy the leader's facts onto the system, record the changes.

    ``body_digest`` (the SHA-256 of the body as it came): when the previous inventory has
    the same, the document is the same and is recorded without being flattened or
    diffed. ``checked``: ``inventory_validate`` has already accepted ``payload``.
    """
    if not checked:
        payload = inventory_validate(payload)
    now = received_at or timezone.now()
    copied = _system_fields_from(payload)
    # Without a savepoint of its own: inside the drain's savepoint for this row, it is that.
    with transaction.atomic(savepoint=False):
        previous = (
            Inventory.objects.filter(system_id=system.pk)
            .order_by("-received_at")
            .values("pk", "facts_digest", "body_digest")
            .first()
        )
        identical = previous is not None and body_digest and previous["body_digest"] == body_digest
        if identical:
            assert previous is not None
            flat = None
            digest = previous["facts_digest"]
        else:
            flat = inventory_diff.flatten(payload)
            digest = inventory_diff.facts_digest(flat)
        inventory = Inventory.objects.create(
            system_id=system.pk,
            received_at=now,
            data=payload,
            size=size,
            facts_digest=digest,
            body_digest=body_digest,
        )
        # Most inventories differ from the previous one only in counters: the digest says
        # so without fetching and flattening the previous document.
        if flat is not None and previous is not None and previous["facts_digest"] != digest:
            previous_data = Inventory.objects.values_list("data", flat=True).get(pk=previous["pk"])
            InventoryChange.objects.bulk_create(
                InventoryChange(
                    system_id=system.pk,
                    inventory=inventory,
                    detected_at=now,
                    path=path[:512],
                    old=old,
                    new=new,
                    severity=severity,
                )
                for path, old, new, severity in inventory_diff.diff_flat(
                    inventory_diff.flatten(previous_data), flat
                )
            )
        System.objects.filter(pk=system.pk).update(last_inventory_at=now, **copied)
        for name, value in copied.items():
            setattr(system, name, value)
        system.last_inventory_at = now
        inventory_received.send(sender=System, system=system, inventory=inventory)
    return inventory


# --- The inventory inbox ----------------------------------------------------------------------


def inventory_accept(*, system: System, body: bytes) -> InventoryInbox:
    """Accept an inventory: check it (``inventory_parse``), store the body as it came with
    its digest in the inbox (one INSERT) and have the inbox drained.

    The document is parsed, diffed and fingerprinted by the drain, off the request path;
    in the embedded default (no broker) the drain runs in this process once the row is
    committed. The INSERT binds its parameters on the server (``bound_cursor``): the body
    travels as binary, where Django's client-side binding would spell 50 KB out as a hex
    literal in the SQL text, which cost more CPU than everything else the request does.
    """
    row = _inbox_row(system.pk, body)
    if connection.vendor == "postgresql":
        with bound_cursor() as cursor:
            cursor.execute(
                _INBOX_INSERT, [row.system_id, row.received_at, body, row.size, row.digest]
            )
            (row.pk,) = cursor.fetchone()
    else:
        row.save(force_insert=True)
    runs.task_nudge(INBOX_DRAIN_TASK, every=settings.INVENTORY_INBOX_NUDGE_SECONDS)
    return row


def inventory_accept_guarded(*, pk: int, digest: str, body: bytes) -> InventoryInbox | None:
    """``inventory_accept`` for a system the process remembers (hot.remembered): the
    INSERT itself re-checks, in the database, what authentication checks (the same secret
    digest, registered, confirmed, not suspended, not deleted), so one statement does
    the work of the lookup and the INSERT. None when it inserted nothing: the system
    changed since, and the caller takes the full path. PostgreSQL only."""
    row = _inbox_row(pk, body)
    with bound_cursor() as cursor:
        cursor.execute(
            _INBOX_INSERT_GUARDED, [row.received_at, body, row.size, row.digest, pk, digest]
        )
        found = cursor.fetchone()
    if found is None:
        return None
    (row.pk,) = found
    runs.task_nudge(INBOX_DRAIN_TASK, every=settings.INVENTORY_INBOX_NUDGE_SECONDS)
    return row


def _inbox_row(system_id: int, body: bytes) -> InventoryInbox:
    """The inbox row of a body that passed ``inventory_parse`` (raised otherwise)."""
    inventory_parse(body)
    return InventoryInbox(
        system_id=system_id,
        received_at=timezone.now(),
        body=body,
        size=len(body),
        digest=hashlib.sha256(body).hexdigest(),
    )


_INBOX_INSERT = (
    f"INSERT INTO {InventoryInbox._meta.db_table}"  # noqa: S608
    " (system_id, received_at, body, size, digest, error) VALUES (%s, %s, %s, %s, %s, '')"
    " RETURNING id"
)
_INBOX_INSERT_GUARDED = (
    f"INSERT INTO {InventoryInbox._meta.db_table}"  # noqa: S608
    " (system_id, received_at, body, size, digest, error)"
    " SELECT s.id, %s, %s, %s, %s, '' FROM " + System._meta.db_table + " s"
    " WHERE s.id = %s AND s.secret_digest = %s AND s.registered_at IS NOT NULL"
    " AND s.secret_confirmed_at IS NOT NULL AND s.suspended_at IS NULL"
    " AND s.deleted_at IS NULL RETURNING id"
)


INBOX_DRAIN_TASK = "fleet_app.tasks.inventory_inbox_drain"

# Bodies fetched per query while a batch is processed: a batch of 10 MB documents must not
# hold them all in memory at once.
_INBOX_FETCH_BYTES = 8 * 1024 * 1024


@dataclass
class InboxDrained:
    """What a drain did: rows recorded, rows failed (kept with their reason), rows left to
    a later batch because an earlier row of the same system was held by another worker."""

    processed: int = 0
    failed: int = 0
    deferred: int = 0


def inventory_inbox_drain(
    *, batch: int | None = None, seconds: float | None = None, linger: float = 0.0
) -> InboxDrained:
    """Process the inventory inbox in batches until it is empty or ``seconds`` have passed.

    ``linger``: once the inbox is empty, keep looking for that long (every
    ``_LINGER_POLL`` s) before returning. The collect API nudges the drain at most once per
    ``INVENTORY_INBOX_NUDGE_SECONDS`` per process, so a row accepted just after a nudge
    has none of its own: the task that nudge sent lingers that long, and sees the row.
    Without it such a row waited for beat's sweep.

    Each batch is one transaction: it claims the oldest rows no other worker holds
    (``FOR UPDATE SKIP LOCKED``), records each (parse, diff, fingerprint, update the
    system) in a savepoint and deletes it in the same transaction, so a worker that dies
    mid-batch leaves every row of the batch as it was, for the next one, and no row is
    ever recorded twice. A row whose system has an earlier row held by another worker
    waits for a later batch: a system's inventories are recorded in arrival order.
    """
    batch = batch or settings.INVENTORY_INBOX_BATCH
    deadline = None if seconds is None else time.monotonic() + seconds
    drained = InboxDrained()
    idle_since = None
    while deadline is None or time.monotonic() < deadline:
        step, claimed = _inbox_batch(batch)
        drained.processed += step.processed
        drained.failed += step.failed
        drained.deferred += step.deferred
        if claimed and not step.processed and not step.failed:
            break  # every row waits for another worker, which carries on
        if claimed:
            idle_since = None
        if claimed == batch or step.deferred:
            continue  # more rows may be waiting right behind these
        # The inbox held no more than this batch: done, unless lingering.
        now = time.monotonic()
        idle_since = idle_since or now
        if now - idle_since >= linger:
            break
        time.sleep(_LINGER_POLL)
    return drained


_LINGER_POLL = 0.05


def _inbox_batch(size: int) -> tuple[InboxDrained, int]:
    step = InboxDrained()
    with transaction.atomic():
        claimed = list(
            InventoryInbox.objects.select_for_update(skip_locked=True)
            .filter(failed_at__isnull=True)
            .order_by("id")
            .only("id", "system_id", "received_at", "size", "digest")[:size]
        )
        if not claimed:
            return step, 0
        ids = [row.pk for row in claimed]
        # A pending row of the same system, older than some of ours and not ours, is held
        # by another worker (a row nobody held would have been claimed in id order): ours
        # behind it wait.
        held = dict(
            InventoryInbox.objects.filter(
                system_id__in={row.system_id for row in claimed},
                failed_at__isnull=True,
                id__lt=ids[-1],
            )
            .exclude(id__in=ids)
            .values("system_id")
            .annotate(first=models.Min("id"))
            .values_list("system_id", "first")
        )
        ready = [r for r in claimed if r.system_id not in held or r.pk < held[r.system_id]]
        step.deferred = len(claimed) - len(ready)
        systems = System.objects.in_bulk({row.system_id for row in ready})
        done: list[int] = []
        failed: list[tuple[int, str]] = []
        for group in _inbox_groups(ready):
            bodies = dict(
                InventoryInbox.objects.filter(pk__in=[row.pk for row in group]).values_list(
                    "pk", "body"
                )
            )
            for row in group:
                reason = _inbox_record(row, bytes(bodies[row.pk]), systems.get(row.system_id))
                if reason:
                    failed.append((row.pk, reason))
                else:
                    done.append(row.pk)
        if done:
            InventoryInbox.objects.filter(pk__in=done).delete()
        now = timezone.now()
        for pk, reason in failed:
            InventoryInbox.objects.filter(pk=pk).update(failed_at=now, error=reason[:2000])
    step.processed, step.failed = len(done), len(failed)
    return step, len(claimed)


def _inbox_groups(rows: list[InventoryInbox]) -> list[list[InventoryInbox]]:
    groups: list[list[InventoryInbox]] = [[]]
    total = 0
    for row in rows:
        if groups[-1] and total + row.size > _INBOX_FETCH_BYTES:
            groups.append([])
            total = 0
        groups[-1].append(row)
        total += row.size
    return groups if groups[0] else []


def _inbox_record(row: InventoryInbox, body: bytes, system: System | None) -> str:
    """Record one inbox row in a savepoint; the reason it failed, or "" if it did not.

    Transient errors (the database went away) propagate: the batch rolls back and is
    taken again later; anything else fails this row only.
    """
    if system is None:
        return "The system no longer exists."
    try:
        with transaction.atomic():
            payload = inventory_parse(body)
            inventory_ingest(
                system=system,
                payload=payload,
                size=row.size,
                received_at=row.received_at,
                body_digest=row.digest,
                checked=True,
            )
    except runs.TRANSIENT_ERRORS:
        raise
    except InvalidInput as error:
        return error.message
    except Exception as error:  # a receiver or the database refused it: kept, with why
        logger.warning("inventory inbox row %s failed: %s", row.pk, error)
        return f"{type(error).__name__}: {error}"
    return ""
