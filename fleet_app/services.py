"""Everything in the fleet that writes: one function per use case, transactional."""

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import validate_slug
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone
from django.utils.text import slugify

from . import credentials, hot, pending_secrets
from .db import bound_cursor
from .errors import Conflict, Forbidden, InvalidInput, NotAuthenticated
from .inventories import (
    InboxDrained as InboxDrained,
)
from .inventories import (
    inventory_accept as inventory_accept,
)
from .inventories import (
    inventory_accept_guarded,
)
from .inventories import (
    inventory_inbox_drain as inventory_inbox_drain,
)
from .inventories import (
    inventory_ingest as inventory_ingest,
)
from .inventories import (
    inventory_parse as inventory_parse,
)
from .inventories import (
    inventory_validate as inventory_validate,
)
from .models import (
    AuditEntry,
    Inventory,
    InventoryInbox,
    Organization,
    System,
    SystemActivityDay,
    User,
)

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


# The same columns in the model's field order, as Model.from_db takes them.
_AUTH_COLUMNS = [f.attname for f in System._meta.concrete_fields if f.attname in _AUTH_FIELDS]
_AUTH_SQL = (
    f"SELECT {', '.join(_AUTH_COLUMNS)} FROM {System._meta.db_table}"  # noqa: S608
    " WHERE system_key = %s"
)


def _system_by_key(system_key: str) -> System | None:
    """The system with this key (the fields authentication and the collect views read).

    On PostgreSQL one bound statement whose row becomes the instance as the ORM's own
    queries make it (``from_db``): the raw queryset it replaces spent more CPU deciding
    how to build the instance than the query took. Elsewhere the raw queryset, which
    applies the database's converters (SQLite hands back datetimes as text)."""
    if connection.vendor != "postgresql":
        found = list(System.objects.raw(_AUTH_SQL, [system_key]))
        return found[0] if found else None
    with bound_cursor() as cursor:
        cursor.execute(_AUTH_SQL, [system_key])
        row = cursor.fetchone()
    return System.from_db(connection.alias, _AUTH_COLUMNS, row) if row else None


def system_authenticate(*, system_key: str, system_secret: str, lenient: bool = False) -> System:
    """Find and verify a system by its Basic credentials: one indexed query.

    The busiest query of the product: written as raw SQL so that each call does not pay
    for the ORM compiling the same statement again (about a third of a heartbeat's CPU).
    A system that has not used its current secret yet may present one of its pending
    secrets instead (one more query, only then); the first one used is confirmed.

    ``lenient`` (``/info``): a suspended or not yet registered system is answered too, so
    that it can show what it is; nothing is confirmed for it.
    """
    system = _system_by_key(system_key)
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


def inventory_accept_from(
    *, system_key: str, system_secret: str, body: Callable[[], bytes]
) -> InventoryInbox:
    """Authenticate an inventory by its Basic credentials, then read (``body``) and accept
    it (inventory_accept).

    A system this process remembers (hot.py: it heartbeats through the same process every
    few minutes) is checked against the remembered digest in constant time and accepted
    by one guarded INSERT, which re-checks its state in the database; any other, or one
    that changed since, takes the full path (authenticate, then the INSERT) and is
    remembered. The body is read only once the credentials are known good."""
    known = hot.remembered(system_key, system_secret)
    data = None
    if known is not None and connection.vendor == "postgresql":
        data = body()
        accepted = inventory_accept_guarded(pk=known[0], digest=known[1], body=data)
        if accepted is not None:
            return accepted
        hot.forget(system_key)  # changed since: the full path answers, and remembers anew
    system = system_authenticate(system_key=system_key, system_secret=system_secret)
    hot.remember(system)
    return inventory_accept(system=system, body=body() if data is None else data)


@dataclass(frozen=True)
class Heartbeat:
    """An acknowledged heartbeat: whose, and the time recorded as its last."""

    system_key: str
    at: dt.datetime


def system_heartbeat(*, authorization: str | None) -> Heartbeat:
    """Authenticate a heartbeat by its Basic credentials and record it.

    A system this process served recently is one guarded UPDATE (hot.py); any other in
    a state to heartbeat is looked up by the group's leader, with the other such systems
    of the moment in one SELECT, and written with them. A heartbeat neither finds (a
    wrong secret, a suspended system, a secret not yet confirmed) takes the full path:
    authenticate (one indexed SELECT), then the UPDATE, with its precise answer. The
    credentials are parsed once for all; the secret is digested once on the fast path,
    known key or not, so a miss costs the same. Concurrent heartbeats of a process share
    one statement and one commit (hot.record), and each returns once its row is committed.
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
