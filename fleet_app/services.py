"""Everything in the fleet that writes: one function per use case, transactional."""

import datetime as dt
import hashlib
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import validate_slug
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from django.utils.text import slugify

from . import credentials, hot, inventory_diff, pending_secrets, runs
from .errors import Conflict, Forbidden, InvalidInput, NotAuthenticated
from .models import (
    AuditEntry,
    Inventory,
    InventoryChange,
    InventoryInbox,
    Organization,
    System,
    SystemActivityDay,
    User,
)
from .signals import inventory_received

logger = logging.getLogger(__name__)

# Fields never copied into an audit entry in clear.
_MASKED_FIELDS = ("password", "secret", "digest", "token")

# --- Audit --------------------------------------------------------------------------------


def audit_snapshot(obj: models.Model) -> dict[str, Any]:
    """A JSON-safe copy of a row's concrete fields, with credentials masked."""
    # Every concrete column, editable or not (system_key, path, created_at …).
    data = {f.name: f.value_from_object(obj) for f in obj._meta.concrete_fields}
    for key in list(data):
        if any(marker in key for marker in _MASKED_FIELDS):
            data[key] = "***" if data[key] else data[key]
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def audit_record(
    *,
    actor: User | None,
    action: str,
    obj: models.Model | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    organization: Organization | None = None,
) -> AuditEntry:
    """Write one audit entry. Call it inside the transaction that makes the change."""
    entry = audit_entry_build(
        actor=actor, action=action, obj=obj, before=before, after=after, organization=organization
    )
    entry.save(force_insert=True)
    return entry


def audit_entry_build(
    *,
    actor: User | None,
    action: str,
    obj: models.Model | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    organization: Organization | None = None,
) -> AuditEntry:
    """An unsaved audit entry, for a service that writes a batch of them with
    ``AuditEntry.objects.bulk_create`` in the transaction that makes the changes."""
    if organization is None and obj is not None:
        organization = obj if isinstance(obj, Organization) else getattr(obj, "organization", None)
    return AuditEntry(
        actor=actor if actor is not None and actor.pk else None,
        actor_repr=str(actor) if actor is not None else "system",
        action=action,
        content_type=ContentType.objects.get_for_model(obj) if obj is not None else None,
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:255] if obj is not None else "",
        organization=organization,
        before=before,
        after=after,
    )


def collect_url() -> str:
    """The collect API base a cluster stores (``{base}/collect/api/systems``)."""
    return settings.PUBLIC_BASE_URL.rstrip("/") + "/collect/api/systems"


def system_page_url(system: System) -> str:
    """The staff page of a system (``/systems/<system_key>``), the link a cluster shows."""
    return f"{settings.PUBLIC_BASE_URL.rstrip('/')}/systems/{system.system_key}"


# --- Organizations ----------------------------------------------------------------------


def organization_placement_check(*, kind: str, parent: Organization | None) -> None:
    """Raise ``InvalidInput`` unless a ``kind`` may sit directly under ``parent``."""
    if kind not in Organization.Kind.values:
        raise InvalidInput(f"Unknown organization kind {kind!r}.")
    allowed = Organization.ALLOWED_PARENTS[Organization.Kind(kind)]
    if parent is None and allowed:
        raise InvalidInput(f"A {kind} must have a parent organization.")
    if parent is not None and parent.kind not in allowed:
        raise InvalidInput(f"A {kind} cannot be placed under a {parent.kind}.")


# Room for "-<n>" after the base within the slug column's 80 characters.
SLUG_BASE_MAX = 70


def organization_slug_base(name: str) -> str:
    """The slug a name asks for before de-duplication (``Acme Ltd.`` → ``acme-ltd``)."""
    return slugify(name)[:SLUG_BASE_MAX].strip("-") or "organization"


def organization_slug_free(name: str) -> str:
    """The first free slug of ``base``, ``base-2``, ``base-3``, … for ``name``."""
    base = organization_slug_base(name)
    # slug__startswith uses the unique column's pattern-ops index.
    taken = set(Organization.objects.filter(slug__startswith=base).values_list("slug", flat=True))
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


@transaction.atomic
def organization_create(
    *,
    actor: User | None,
    name: str,
    kind: str,
    parent: Organization | None = None,
    slug: str | None = None,
) -> Organization:
    """Create an organization under ``parent``; ``slug`` defaults to the first free one
    derived from ``name``."""
    organization_placement_check(kind=kind, parent=parent)
    if slug is not None:
        try:
            validate_slug(slug)
        except ValidationError:
            raise InvalidInput(
                f"The slug {slug!r} may hold only letters, digits, hyphens and underscores."
            ) from None
        if len(slug) > Organization._meta.get_field("slug").max_length:
            raise InvalidInput(f"The slug {slug[:40]!r}… is longer than 80 characters.")
    for attempt in range(3):
        try:
            # A savepoint: two creations may pick the same free slug at once.
            with transaction.atomic():
                organization = Organization.objects.create(
                    name=name, kind=kind, parent=parent, slug=slug or organization_slug_free(name)
                )
            break
        except IntegrityError:
            if slug is not None and Organization.objects.filter(slug=slug).exists():
                raise InvalidInput(f"Another organization already has the slug {slug!r}.") from None
            if attempt == 2:
                raise
    organization.path = f"{parent.path if parent else '/'}{organization.pk}/"
    organization.save(update_fields=["path"])
    audit_record(
        actor=actor,
        action="organization.create",
        obj=organization,
        after=audit_snapshot(organization),
    )
    return organization


# --- Systems ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedSecret:
    """A system and its secret in clear, which exists only in this return value."""

    system: System
    system_secret: str


@transaction.atomic
def system_create(
    *, actor: User | None, organization: Organization, name: str, type: str = ""
) -> IssuedSecret:
    """Create a system and issue its secret; the secret is shown once and never stored."""
    name = name.strip()
    if not name:
        raise InvalidInput("A system needs a name.")
    public, secret = credentials.system_secret_generate()
    system = System.objects.create(
        organization=organization,
        name=name,
        type=type,
        system_key=credentials.system_key_generate(),
        secret_public=public,
        secret_digest=credentials.digest(secret),
        created_by=actor if actor is not None and actor.pk else None,
    )
    audit_record(actor=actor, action="system.create", obj=system, after=audit_snapshot(system))
    return IssuedSecret(system=system, system_secret=secret)


@transaction.atomic
def system_secret_reissue(
    *, actor: User | None, system: System, overlap: bool = False
) -> IssuedSecret:
    """Issue a new secret; every earlier one stops working at once, unless ``overlap`` (a
    rotation a legacy client asked for): then those issued since the system last used one
    stay valid beside it until one is used (``pending_secrets``)."""
    system = System.objects.select_for_update().get(pk=system.pk)
    before = audit_snapshot(system)
    was_confirmed = system.secret_confirmed_at is not None
    public, secret = credentials.system_secret_generate()
    system.secret_public = public
    system.secret_digest = credentials.digest(secret)
    system.secret_confirmed_at = None
    system.save(update_fields=["secret_public", "secret_digest", "secret_confirmed_at"])
    if overlap:
        pending_secrets.issued(
            system=system, digest=system.secret_digest, replacing_confirmed=was_confirmed
        )
    else:
        pending_secrets.revoke(system_ids=[system.pk])
    audit_record(
        actor=actor,
        action="system.secret_reissue",
        obj=system,
        before=before,
        after=audit_snapshot(system),
    )
    return IssuedSecret(system=system, system_secret=secret)


def _system_set(*, actor: User | None, system: System, action: str, **fields: Any) -> System:
    with transaction.atomic():
        system = System.objects.select_for_update().get(pk=system.pk)
        before = audit_snapshot(system)
        for name, value in fields.items():
            setattr(system, name, value)
        system.save(update_fields=list(fields))
        audit_record(
            actor=actor, action=action, obj=system, before=before, after=audit_snapshot(system)
        )
    return system


def system_suspend(*, actor: User | None, system: System) -> System:
    return _system_set(
        actor=actor, system=system, action="system.suspend", suspended_at=timezone.now()
    )


def system_reactivate(*, actor: User | None, system: System) -> System:
    return _system_set(actor=actor, system=system, action="system.reactivate", suspended_at=None)


def system_delete(*, actor: User | None, system: System) -> System:
    """Soft delete: the system can no longer authenticate; its history stays."""
    return _system_set(
        actor=actor, system=system, action="system.delete", deleted_at=timezone.now()
    )


def _refuse_if_disabled(system: System) -> None:
    if system.deleted_at is not None:
        raise Forbidden("This system has been deleted.")
    if system.suspended_at is not None:
        raise Forbidden("This system is suspended.")


def system_register(*, system_secret: Any) -> System:
    """Register a system that staff created, by its secret: one indexed lookup."""
    if not isinstance(system_secret, str) or not system_secret:
        raise InvalidInput("system_secret is required and must be a string.")
    public = credentials.system_secret_public_part(system_secret)
    system = System.objects.filter(secret_public=public).first() if public is not None else None
    # Digested even when no system has this public part: the same work either way.
    valid = credentials.verify(system_secret, system.secret_digest if system else None)
    if system is None or not valid:
        raise NotAuthenticated("Unknown system secret.")
    _refuse_if_disabled(system)
    now = timezone.now()
    # Claim the registration atomically: two concurrent calls cannot both succeed.
    claimed = System.objects.filter(pk=system.pk, registered_at__isnull=True).update(
        registered_at=now
    )
    if not claimed:
        raise Conflict("This system is already registered.")
    system.registered_at = now
    return system


# Only what authentication and the hot path need; the inventory row is never loaded.
_AUTH_FIELDS = (
    "id",
    "organization_id",
    "name",
    "ui_name",
    "type",
    "system_key",
    "secret_digest",
    "registered_at",
    "secret_confirmed_at",
    "suspended_at",
    "deleted_at",
    "last_heartbeat_at",
    "last_inventory_at",
    "fqdn",
    "ipv4_address",
    "ipv6_address",
    "version",
)


def system_authenticate(*, system_key: str, system_secret: str, lenient: bool = False) -> System:
    """Find and verify a system by its Basic credentials: one indexed query.

    The busiest query of the product: written as raw SQL so that each call does not pay
    for the ORM compiling the same statement again (about a third of a heartbeat's CPU).
    A system that has not used its current secret yet may present one of its pending
    secrets instead (one more query, only then); the first one used is confirmed.

    ``lenient`` (``/info``): a suspended or not yet registered system is answered too, so
    that it can show what it is; nothing is confirmed for it.
    """
    table = System._meta.db_table
    found = list(
        System.objects.raw(
            f"SELECT {', '.join(_AUTH_FIELDS)} FROM {table} WHERE system_key = %s",  # noqa: S608
            [system_key],
        )
    )
    system = found[0] if found else None
    # An unknown key is digested too (against a dummy): it answers in the time a wrong
    # secret does.
    valid = credentials.verify(system_secret, system.secret_digest if system else None)
    pending = None
    if system is not None and not valid and system.secret_confirmed_at is None:
        pending = pending_secrets.match(system, system_secret)
        valid = pending is not None
    if system is None or not valid:
        raise NotAuthenticated("Invalid system credentials.")
    if lenient:
        if system.deleted_at is not None:
            raise Forbidden("This system has been deleted.")
        if system.suspended_at is not None or system.registered_at is None:
            return system
    _refuse_if_disabled(system)
    if system.registered_at is None:
        raise Forbidden("This system is not registered yet: call register first.")
    if pending is not None:
        pending_secrets.promote(system, pending, system_secret)
    elif system.secret_confirmed_at is None:
        pending_secrets.confirm(system)
    return system


@dataclass(frozen=True)
class Heartbeat:
    """An acknowledged heartbeat: whose, and the time recorded as its last."""

    system_key: str
    at: dt.datetime


def system_heartbeat(*, authorization: str | None) -> Heartbeat:
    """Authenticate a heartbeat by its Basic credentials and record it.

    A system this process served recently is one guarded UPDATE (hot.py); any other, or
    one whose state changed since, takes the full path: authenticate (one indexed
    SELECT), then the UPDATE. The credentials are parsed once for both. Either way the
    secret is digested once on the fast path, known key or not, so a miss costs the same.
    Concurrent heartbeats of a process share one statement and one commit (hot.record),
    and each returns once its row is committed.
    """
    hot.arriving()
    try:
        system_key, system_secret = credentials.basic_parse(authorization)
        at = hot.heartbeat(system_key, system_secret)
        if at is not None:
            return Heartbeat(system_key=system_key, at=at)
        system = system_authenticate(system_key=system_key, system_secret=system_secret)
        at = _heartbeat_record(system)
        hot.remember(system)
        return Heartbeat(system_key=system.system_key, at=at)
    finally:
        hot.departed()


def system_heartbeat_record(*, system: System) -> dt.datetime:
    """Record a heartbeat of a system whose credentials were checked elsewhere (the demo
    fleet's simulator holds no secrets): refused as the collect API refuses it."""
    _refuse_if_disabled(system)
    if system.registered_at is None:
        raise Forbidden("This system is not registered yet: call register first.")
    return _heartbeat_record(system)


def _heartbeat_record(system: System) -> dt.datetime:
    """Record liveness: one statement, with the activity day on the first heartbeat of a
    day (hot.record, shared with the heartbeats of this process at the same moment)."""
    now = timezone.now()
    previous = system.last_heartbeat_at
    new_day = previous is None or previous.date() != now.date()
    hot.record(system.pk, now, digest=None, new_day=new_day)
    system.last_heartbeat_at = now
    return now


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


def _inventory_depth_check(payload: dict) -> None:
    """Refuse a document nested beyond ``INVENTORY_MAX_DEPTH``: one walk over its objects
    and lists only (a 50 KB document holds a few hundred), without recursion."""
    pending: list[tuple[Any, int]] = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > INVENTORY_MAX_DEPTH:
            raise InvalidInput(f"The inventory nests deeper than {INVENTORY_MAX_DEPTH} levels.")
        for item in value.values() if isinstance(value, dict) else value:
            if isinstance(item, dict | list):
                pending.append((item, depth + 1))


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
    committed.
    """
    inventory_parse(body)
    row = InventoryInbox(
        system_id=system.pk,
        received_at=timezone.now(),
        body=body,
        size=len(body),
        digest=hashlib.sha256(body).hexdigest(),
    )
    row.save(force_insert=True)
    runs.task_nudge(INBOX_DRAIN_TASK, every=settings.INVENTORY_INBOX_NUDGE_SECONDS)
    return row


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
    *, batch: int | None = None, seconds: float | None = None
) -> InboxDrained:
    """Process the inventory inbox in batches until it is empty or ``seconds`` have passed.

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
    while deadline is None or time.monotonic() < deadline:
        step, claimed = _inbox_batch(batch)
        drained.processed += step.processed
        drained.failed += step.failed
        drained.deferred += step.deferred
        if claimed < batch and not step.deferred:
            break  # the inbox held no more than this batch
        if not step.processed and not step.failed:
            break  # every row waits for another worker, which carries on
    return drained


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


# --- Housekeeping ----------------------------------------------------------------------------


def fleet_prune_history(*, days: int, batch: int = 5000) -> dict[str, int]:
    """Delete inventories and activity days older than ``days``, in batches.

    The newest inventory of each system is kept whatever its age: it is what the next
    inventory is compared with.
    """
    cutoff = timezone.now() - dt.timedelta(days=days)
    removed = {"inventories": 0, "activity_days": 0}
    latest = Inventory.objects.filter(system_id=models.OuterRef("system_id")).order_by(
        "-received_at"
    )
    while True:
        ids = list(
            Inventory.objects.filter(received_at__lt=cutoff)
            .exclude(pk=models.Subquery(latest.values("pk")[:1]))
            .values_list("pk", flat=True)[:batch]
        )
        if not ids:
            break
        removed["inventories"] += (
            Inventory.objects.filter(pk__in=ids).delete()[1].get(Inventory._meta.label, 0)
        )
    while True:
        ids = list(
            SystemActivityDay.objects.filter(day__lt=cutoff.date()).values_list("pk", flat=True)[
                :batch
            ]
        )
        if not ids:
            break
        removed["activity_days"] += SystemActivityDay.objects.filter(pk__in=ids).delete()[0]
    return removed
