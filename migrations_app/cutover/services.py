"""Everything in the cutover that writes: mappings, rotation, release, fingerprints, counts."""

import datetime as dt
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, F, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from fleet_app import credentials, pending_secrets
from fleet_app import services as fleet
from fleet_app.errors import (
    Conflict,
    FleetError,
    Forbidden,
    InvalidInput,
    NotAuthenticated,
    TooManyRequests,
)
from fleet_app.models import AuditEntry, Inventory, Organization, System, User
from fleet_app.selectors import organization_resolve

from ..legacy_import import (
    ImportReport,
    LegacyImport,
    Record,
    RowRefused,
    records_from,
    row_stamp,
    row_text,
)
from . import throttle
from .models import CutoverDay, FingerprintAnomaly, LegacyMapping, ProxyAttemptDay

# --- Counters -------------------------------------------------------------------------------

COUNTER_FIELDS = ("mappings", "rotated", "confirmed", "fingerprinted", "released")


def counters_bump(day: dt.date | None = None, **deltas: int) -> None:
    """Add ``deltas`` to the day's counters, in the caller's transaction."""
    deltas = {k: v for k, v in deltas.items() if v}
    if not deltas:
        return
    day = day or timezone.now().date()
    updates = {name: F(name) + value for name, value in deltas.items()}
    if CutoverDay.objects.filter(day=day).update(**updates):
        return
    try:
        with transaction.atomic():
            CutoverDay.objects.create(day=day, **deltas)
    except IntegrityError:
        # Another transaction created the day's row first.
        CutoverDay.objects.filter(day=day).update(**updates)


@transaction.atomic
def cutover_counters_rebuild() -> int:
    """Recompute every day's counters from the mappings (repairs any drift)."""
    per_day: dict[dt.date, dict[str, int]] = {}
    sources = {
        "mappings": "created_at",
        "rotated": "rotated_at",
        "confirmed": "confirmed_at",
        "fingerprinted": "fingerprint_at",
        "released": "released_at",
    }
    for counter, stamp in sources.items():
        rows = (
            LegacyMapping.objects.filter(**{f"{stamp}__isnull": False})
            .annotate(day=TruncDate(stamp))
            .values("day")
            .annotate(n=Count("pk"))
        )
        for row in rows:
            per_day.setdefault(row["day"], dict.fromkeys(COUNTER_FIELDS, 0))[counter] = row["n"]
    CutoverDay.objects.all().delete()
    CutoverDay.objects.bulk_create(CutoverDay(day=day, **c) for day, c in per_day.items())
    return len(per_day)


# --- Import ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MappingRow:
    legacy_id: str
    token: str
    name: str
    type: str
    organization: Organization
    last_seen: dt.datetime | None


def _mapping_clean(
    row: dict[str, Any], *, default_organization: Organization | None, organization
) -> _MappingRow:
    legacy_id = row_text(row, "legacy_system_id", 128, required=True)
    token = row_text(row, "legacy_token", 512, required=True)
    name = row_text(row, "name", 255) or legacy_id
    kind = row_text(row, "type", 64)
    org_ref = row_text(row, "organization", 255)
    if org_ref:
        found = organization(org_ref)
    elif default_organization is not None:
        found = default_organization
    else:
        raise RowRefused("no organization: give an organization column or --organization.")
    return _MappingRow(legacy_id, token, name, kind, found, row_stamp(row, "legacy_last_seen_at"))


class _Organizations:
    """``organization_resolve`` within the caller's reach, once per distinct reference."""

    def __init__(self, within: QuerySet[Organization]):
        self.within, self.found = within, {}

    def __call__(self, reference: str) -> Organization:
        if reference not in self.found:
            try:
                self.found[reference] = organization_resolve(reference, within=self.within)
            except InvalidInput as error:
                self.found[reference] = error.message
        found = self.found[reference]
        if isinstance(found, str):
            # A new exception each time: re-raising one would grow its traceback forever.
            raise RowRefused(found)
        return found


def mappings_import_batch(
    *,
    rows: Sequence[Record],
    report: ImportReport,
    default_organization: Organization | None,
    organization,
    born_registered: bool,
    actor: User | None,
) -> None:
    """Create the mappings (and their native systems) of a batch of rows, in bulk.

    A row is refused (on ``report``) before anything is written: bad fields, an unknown
    organization, a legacy id already mapped with another token. A row already mapped
    with the same token counts as unchanged. Call it in a transaction.
    """
    clean: list[tuple[Record, _MappingRow]] = []
    for row in rows:
        try:
            clean.append(
                (
                    row,
                    _mapping_clean(
                        row.fields,
                        default_organization=default_organization,
                        organization=organization,
                    ),
                )
            )
        except InvalidInput as error:
            report.refuse(row, error.message)
    # One query for the batch: legacy_system_id is unique (its index).
    existing = dict(
        LegacyMapping.objects.filter(
            legacy_system_id__in=[item.legacy_id for _, item in clean]
        ).values_list("legacy_system_id", "legacy_token_digest")
    )
    new: list[tuple[_MappingRow, str]] = []
    for row, item in clean:
        digest = credentials.digest(item.token)
        if item.legacy_id not in existing:
            new.append((item, digest))
        elif credentials.verify(item.token, existing[item.legacy_id]):
            report.unchanged["mappings"] += 1
        else:
            report.refuse(
                row,
                f"legacy_system_id {item.legacy_id!r} is already mapped with a different token.",
            )
    if not new:
        return
    now = timezone.now()
    creator = actor if actor is not None and actor.pk else None
    systems = []
    for item, _ in new:
        public, secret = credentials.system_secret_generate()
        systems.append(
            System(
                organization=item.organization,
                name=item.name,
                type=item.type,
                system_key=credentials.system_key_generate(),
                secret_public=public,
                secret_digest=credentials.digest(secret),
                created_by=creator,
                created_at=now,
                # The rotation hands out the secret; nobody holds this one.
                registered_at=now if born_registered else None,
            )
        )
    System.objects.bulk_create(systems)
    mappings = LegacyMapping.objects.bulk_create(
        LegacyMapping(
            legacy_system_id=item.legacy_id,
            legacy_token_digest=digest,
            system=system,
            legacy_last_seen_at=item.last_seen,
        )
        for (item, digest), system in zip(new, systems, strict=True)
    )
    counters_bump(mappings=len(mappings))
    audit = []
    for mapping, system in zip(mappings, systems, strict=True):
        audit.append(
            fleet.audit_entry_build(
                actor=actor, action="system.create", obj=system, after=fleet.audit_snapshot(system)
            )
        )
        audit.append(
            fleet.audit_entry_build(
                actor=actor,
                action="mapping.import",
                obj=mapping,
                organization=system.organization,
                after={
                    "legacy_system_id": mapping.legacy_system_id,
                    "system_key": system.system_key,
                },
            )
        )
    AuditEntry.objects.bulk_create(audit)
    report.created["mappings"] += len(mappings)
    for item, _ in new:
        report.example("mappings", f"{item.legacy_id} → {item.name} ({item.organization.name})")


def mappings_import_feed(
    run: LegacyImport,
    records: Iterable[Record],
    *,
    within: QuerySet[Organization],
    default_organization: Organization | None = None,
    born_registered: bool = False,
    actor: User | None = None,
) -> None:
    """Import ``records`` in ``run``: organizations named by the rows are resolved
    ``within`` the caller's reach; a legacy_system_id may appear once in the import."""
    organization = _Organizations(within)

    def handle(rows: list[Record], report: ImportReport) -> None:
        mappings_import_batch(
            rows=rows,
            report=report,
            default_organization=default_organization,
            organization=organization,
            born_registered=born_registered,
            actor=actor,
        )

    run.feed(iter(records), section="mappings", handle=handle, key="legacy_system_id")


def mappings_import(
    *,
    rows: Iterable[tuple[int, dict[str, Any]]],
    apply: bool,
    within: QuerySet[Organization] | None = None,
    default_organization: Organization | None = None,
    born_registered: bool = False,
    actor: User | None = None,
) -> ImportReport:
    """Import ``(line, row)`` pairs built by the caller (the demo, tests), as the command
    imports a file's rows; the first refusals are in ``report.errors``."""
    with LegacyImport(apply=apply) as run:
        mappings_import_feed(
            run,
            records_from(rows),
            within=within if within is not None else Organization.objects.all(),
            default_organization=default_organization,
            born_registered=born_registered,
            actor=actor,
        )
    return run.report


# --- Rotation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    """Native credentials handed to a legacy client; the secret exists only here."""

    system_key: str
    system_secret: str
    collect_url: str


def _legacy_authenticate(
    *, legacy_system_id: str, legacy_token: str, address: str, seen: list | None = None
):
    """The mapping of a legacy pair, or the refusal. ``seen`` receives the mapping the
    legacy id names, if any, even when the call is refused (the attempt record)."""
    if not legacy_system_id or not legacy_token:
        raise NotAuthenticated("HTTP Basic legacy_system_id:legacy_token is required.")
    if "\x00" in legacy_system_id or "\x00" in legacy_token:
        raise InvalidInput("The legacy id and token must not contain NUL characters.")
    wait = throttle.throttled(legacy_system_id=legacy_system_id, address=address)
    mapping = LegacyMapping.objects.filter(legacy_system_id=legacy_system_id).first()
    if seen is not None and mapping is not None:
        seen.append(mapping)
    if wait:
        raise TooManyRequests(
            "Too many failed attempts from this address; try again later.",
            retry_after=wait,
        )
    if mapping is None or not credentials.verify(legacy_token, mapping.legacy_token_digest):
        throttle.record_failure(legacy_system_id=legacy_system_id, address=address)
        raise NotAuthenticated("Unknown legacy credentials.")
    return mapping


def mapping_rotate(*, legacy_system_id: str, legacy_token: str, address: str) -> Rotation:
    """Swap a legacy pair for fresh native credentials, in one transaction.

    Asked again before the native credentials were used (a lost response, or ns8 running
    migrate-to-my from two scripts at once), it issues another fresh secret and the
    earlier ones keep working as pending secrets (``fleet_app`` ``PendingSecret``) until
    the system uses one of them: whichever answer the client kept, it authenticates, and
    the others are revoked then. Once the system has used them, the mapping is closed:
    409 until staff re-open it.

    Every call, answered or refused, is recorded on the mapping its legacy id names (time,
    outcome, address) and in the day's attempt counts, after the transaction that
    refused it: a refusal leaves its trace.
    """
    seen: list[LegacyMapping] = []
    try:
        rotation = _mapping_rotate(
            legacy_system_id=legacy_system_id,
            legacy_token=legacy_token,
            address=address,
            seen=seen,
        )
    except FleetError as error:
        if legacy_system_id and "\x00" not in legacy_system_id:
            attempt_record(mapping=seen[0] if seen else None, outcome=error.status, address=address)
        raise
    attempt_record(mapping=seen[0], outcome=200, address=address)
    return rotation


def _mapping_rotate(
    *, legacy_system_id: str, legacy_token: str, address: str, seen: list
) -> Rotation:
    found = _legacy_authenticate(
        legacy_system_id=legacy_system_id, legacy_token=legacy_token, address=address, seen=seen
    )
    now = timezone.now()
    with transaction.atomic():
        mapping = LegacyMapping.objects.select_for_update().get(pk=found.pk)
        system = System.objects.get(pk=mapping.system_id)
        if mapping.released_at is not None:
            raise Forbidden("This legacy system was released; its credentials are retired.")
        if system.deleted_at is not None or system.suspended_at is not None:
            raise Forbidden("The system this legacy id maps to is suspended or deleted.")
        if mapping.confirmed_at is not None:
            raise Conflict(
                "This system already uses its native credentials; ask staff to re-open "
                "the mapping if they were lost."
            )
        issued = fleet.system_secret_reissue(actor=None, system=system, overlap=True)
        if system.registered_at is None:
            System.objects.filter(pk=system.pk).update(registered_at=now)
        first = mapping.rotated_at is None
        mapping.rotated_at = mapping.rotated_at or now
        mapping.rotation_count += 1
        mapping.save(update_fields=["rotated_at", "rotation_count"])
        counters_bump(rotated=int(first))
    return Rotation(
        system_key=system.system_key,
        system_secret=issued.system_secret,
        collect_url=fleet.collect_url(),
    )


def attempt_record(*, mapping: LegacyMapping | None, outcome: int, address: str) -> None:
    """Record one ``/proxy/credentials`` call: on the mapping its legacy id names (time,
    outcome, address; a 409 also stamps ``knocked_at``) and in the day's count of its
    outcome.

    Called after the call's own transaction has committed or rolled back, in autocommit:
    what is written here stays whatever the call answered."""
    now = timezone.now()
    code = str(outcome)[:3]
    with transaction.atomic():
        if mapping is not None:
            fields: dict[str, Any] = {
                "last_attempt_at": now,
                "last_attempt_outcome": code,
                "last_attempt_address": address[:64],
            }
            if outcome == 409:
                fields["knocked_at"] = now
            LegacyMapping.objects.filter(pk=mapping.pk).update(**fields)
        day = ProxyAttemptDay.objects.filter(day=now.date(), outcome=code)
        if day.update(count=F("count") + 1):
            return
        try:
            with transaction.atomic():
                ProxyAttemptDay.objects.create(day=now.date(), outcome=code, count=1)
        except IntegrityError:
            # Another call created the day's row first.
            day.update(count=F("count") + 1)


def mapping_release(*, legacy_system_id: str, legacy_token: str, address: str) -> LegacyMapping:
    """Free the legacy slot (``/api/Utils/freekey``): stamps ``released_at`` once."""
    found = _legacy_authenticate(
        legacy_system_id=legacy_system_id, legacy_token=legacy_token, address=address
    )
    with transaction.atomic():
        mapping = LegacyMapping.objects.select_for_update().get(pk=found.pk)
        if mapping.released_at is None:
            mapping.released_at = timezone.now()
            mapping.save(update_fields=["released_at"])
            counters_bump(released=1)
            fleet.audit_record(
                actor=None,
                action="mapping.release",
                obj=mapping,
                organization=mapping.system.organization,
                after={"released_at": mapping.released_at.isoformat()},
            )
    return mapping


def mapping_confirm(*, system: System) -> None:
    """The system used its rotated credentials for the first time."""
    now = timezone.now()
    confirmed = LegacyMapping.objects.filter(
        system_id=system.pk, rotated_at__isnull=False, confirmed_at__isnull=True
    ).update(confirmed_at=now)
    if confirmed:
        counters_bump(confirmed=1)


@transaction.atomic
def mapping_reopen(*, actor: User | None, mapping: LegacyMapping) -> LegacyMapping:
    """Re-open a mapping whose cluster cannot get on by itself.

    Confirmed (the native credentials were lost, a cluster restored from a backup taken
    before its cutover): it may rotate again. Rotated but unconfirmed (a cluster that
    kept an answer and never asks again): the secrets pending for it authenticate again
    for ``ROTATION_GRACE_MINUTES``. A mapping never rotated has nothing to re-open.
    """
    mapping = LegacyMapping.objects.select_for_update().get(pk=mapping.pk)
    if mapping.rotated_at is None:
        return mapping
    before = fleet.audit_snapshot(mapping)
    renewed = None
    if mapping.confirmed_at is not None:
        mapping.confirmed_at = None
        counters_bump(confirmed=-1)
    else:
        renewed = pending_secrets.renew(system=mapping.system)
    mapping.reopened_at = timezone.now()
    mapping.save(update_fields=["confirmed_at", "reopened_at"])
    after = fleet.audit_snapshot(mapping)
    if renewed is not None:
        after["pending_secrets_renewed"] = renewed
    fleet.audit_record(
        actor=actor,
        action="mapping.reopen",
        obj=mapping,
        organization=mapping.system.organization,
        before=before,
        after=after,
    )
    return mapping


# --- Fingerprints ---------------------------------------------------------------------------


def _parse_stamp(value: Any) -> dt.datetime | None:
    """An ISO 8601 stamp sent by a client, or None if it is missing or not one."""
    try:
        parsed = parse_datetime(str(value or ""))
    except ValueError:
        return None
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, dt.UTC)
    return parsed


def mapping_fingerprint(*, system: System, inventory: Inventory) -> None:
    """Read ``facts.migration`` of an inventory; mark the mapping or record an anomaly.

    Inventories of natively subscribed clusters carry ``from_legacy_system_id: null`` and
    cost nothing here.
    """
    migration = inventory.data.get("facts", {}).get("migration") or {}
    claimed = migration.get("from_legacy_system_id")
    if not claimed:
        return
    claimed = str(claimed)[:128]
    mapping = LegacyMapping.objects.filter(system_id=system.pk).first()
    if mapping is not None and mapping.legacy_system_id == claimed:
        if mapping.fingerprint_at is None:
            migrated_at = _parse_stamp(migration.get("migrated_at"))
            LegacyMapping.objects.filter(pk=mapping.pk).update(
                fingerprint_at=inventory.received_at, migrated_at=migrated_at
            )
            counters_bump(fingerprinted=1)
        return
    owner_exists = LegacyMapping.objects.filter(legacy_system_id=claimed).exists()
    kind = FingerprintAnomaly.Kind.MISMATCH if owner_exists else FingerprintAnomaly.Kind.UNKNOWN
    bumped = FingerprintAnomaly.objects.filter(
        system_id=system.pk, claimed_legacy_system_id=claimed, resolved_at__isnull=True
    ).update(
        last_seen_at=inventory.received_at, occurrences=F("occurrences") + 1, inventory=inventory
    )
    if not bumped:
        FingerprintAnomaly.objects.create(
            system_id=system.pk,
            inventory=inventory,
            kind=kind,
            claimed_legacy_system_id=claimed,
            expected_legacy_system_id=mapping.legacy_system_id if mapping else "",
            first_seen_at=inventory.received_at,
            last_seen_at=inventory.received_at,
        )


@transaction.atomic
def anomaly_resolve(*, actor: User | None, anomaly: FingerprintAnomaly) -> FingerprintAnomaly:
    anomaly = FingerprintAnomaly.objects.select_for_update().get(pk=anomaly.pk)
    if anomaly.resolved_at is None:
        anomaly.resolved_at = timezone.now()
        anomaly.save(update_fields=["resolved_at"])
        fleet.audit_record(
            actor=actor,
            action="anomaly.resolve",
            obj=anomaly,
            organization=anomaly.system.organization,
        )
    return anomaly


def legacy_token_generate() -> str:
    """A legacy-style token, for demos and tests."""
    return secrets.token_hex(20)
