"""Accounts: the legacy import's users, quota limits and usage, a batch at a time.

Each batch is validated in memory, looks up what exists (legacy ids, uuids,
organizations, colliding accounts, quota rows) in a few statements and is written with
bulk inserts and updates: 20,000 accounts import in seconds, not minutes.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection
from django.db.models import Q
from django.db.models.functions import Lower, Upper
from django.utils import timezone

from fleet_app import services as fleet
from fleet_app.errors import InvalidInput
from fleet_app.models import Membership, Organization, Quota, User, canonical_email_key

from ..legacy_import import (
    BIGINT_MAX,
    ImportReport,
    Record,
    RowRefused,
    row_flag,
    row_stamp,
    row_text,
    row_whole,
)
from .models import LegacyAccount, LegacyOrganization, LegacyRole
from .selectors import ROLE_RANK, legacy_email_key

# What a PositiveIntegerField holds on PostgreSQL.
COUNT_MAX = 2**31 - 1


def memberships_parse(row: dict[str, Any]) -> list[tuple[str, str]]:
    """``[{"organization": id, "role": r}]`` (JSON) or ``"id:role;id"`` (CSV)."""
    value = row.get("memberships") or []
    pairs: list[tuple[str, str]] = []
    if isinstance(value, str):
        for part in filter(None, (p.strip() for p in value.split(";"))):
            org, _, role = part.partition(":")
            pairs.append((org.strip(), role.strip()))
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                raise RowRefused("memberships must be a list of {organization, role}.")
            pairs.append((str(item.get("organization") or "").strip(), str(item.get("role") or "")))
    else:
        raise RowRefused("memberships must be a list or 'org:role;org:role' text.")
    for org, role in pairs:
        if not org:
            raise RowRefused("a membership has no organization.")
        if len(role) > 32:
            raise RowRefused(f"role {role[:40]!r} is longer than 32 characters.")
    return [(org, role.strip() or "member") for org, role in pairs]


def _looks_like_email(email: str) -> bool:
    """One @ between a local part and a dotted domain, no spaces. Django's validator would
    refuse the internationalized local parts (émile@…) the legacy platform accepted."""
    local, at, domain = email.rpartition("@")
    if not (local and at and "." in domain.strip(".")) or any(c.isspace() for c in email):
        return False
    try:
        validate_email(f"user@{domain}")
    except ValidationError:
        return False
    return True


def _row_uuid(row: dict[str, Any]) -> uuid.UUID | None:
    raw = row_text(row, "uuid", 64)
    if not raw:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise RowRefused(f"uuid {raw[:40]!r} is not a UUID.") from None


def _row_count(row: dict[str, Any], key: str, limit: int) -> int:
    value = row_whole(row, key, required=False) or 0
    if value > limit:
        raise RowRefused(f"{key} {value} is larger than {limit}.")
    return value


@dataclass
class _UserRow:
    record: Record
    legacy_id: str
    email: str
    active: bool
    verified: bool
    joined: Any
    last_login: Any
    full_name: str
    uuid: uuid.UUID | None
    vms: int
    networks: int
    files: int
    memberships: list[tuple[str, str]]
    key: str = ""
    upper: str = ""
    lower: str = ""
    flagged: bool = False


def _user_row(record: Record) -> _UserRow:
    row = record.fields or {}
    legacy_id = row_text(row, "legacy_id", 128, required=True)
    email = row_text(row, "email", 254, required=True)
    if not _looks_like_email(email):
        raise RowRefused(f"email {email!r} is not an e-mail address.")
    return _UserRow(
        record=record,
        legacy_id=legacy_id,
        email=User.objects.normalize_email(email),
        active=row_flag(row, "is_active", True),
        verified=row_flag(row, "email_verified", False),
        joined=row_stamp(row, "date_joined") or timezone.now(),
        last_login=row_stamp(row, "last_login"),
        full_name=row_text(row, "full_name", 255),
        uuid=_row_uuid(row),
        vms=_row_count(row, "vms", COUNT_MAX),
        networks=_row_count(row, "networks", COUNT_MAX),
        files=_row_count(row, "files", BIGINT_MAX),
        memberships=memberships_parse(row),
    )


def _folded(emails: list[str]) -> dict[str, tuple[str, str]]:
    """Each e-mail's ``UPPER()`` and ``lower()`` as the database computes them (the legacy
    rule, and the key of the case-insensitive constraint): one statement per batch."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT e, upper(e), lower(e) FROM unnest(%s::text[]) AS e", [emails])
            return {e: (upper, lower) for e, upper, lower in cursor.fetchall()}
    # SQLite folds ASCII only in lower(); the legacy rule is Python's str.upper() there.
    return {
        e: (legacy_email_key(e), "".join(c.lower() if c.isascii() else c for c in e))
        for e in emails
    }


def _new_rows(rows: list[_UserRow], report: ImportReport) -> tuple[list[_UserRow], dict]:
    """The rows to create (not imported before; known organizations; a uuid no other
    account has) and the organizations they name."""
    existing = set(
        LegacyAccount.objects.filter(legacy_id__in=[r.legacy_id for r in rows]).values_list(
            "legacy_id", flat=True
        )
    )
    report.unchanged["users"] += sum(1 for r in rows if r.legacy_id in existing)
    rows = [r for r in rows if r.legacy_id not in existing]
    taken = {
        str(u)
        for u in LegacyAccount.objects.filter(
            uuid__in={r.uuid for r in rows if r.uuid is not None}
        ).values_list("uuid", flat=True)
    }
    organizations = {
        item.legacy_id: item.organization
        for item in LegacyOrganization.objects.select_related("organization").filter(
            legacy_id__in={org for r in rows for org, _ in r.memberships}
        )
    }
    kept: list[_UserRow] = []
    seen_uuid: dict[str, Record] = {}
    for r in rows:
        missing = next((org for org, _ in r.memberships if org not in organizations), None)
        text = str(r.uuid) if r.uuid is not None else ""
        if missing is not None:
            report.refuse(
                r.record, f"organization {missing!r} is not in the import or the database."
            )
        elif text in taken:
            report.refuse(r.record, f"uuid {text} belongs to another imported account.")
        elif text and text in seen_uuid:
            report.refuse(r.record, f"uuid {text} was already given on {seen_uuid[text].where}.")
        else:
            if text:
                seen_uuid[text] = r.record
            kept.append(r)
    return kept, organizations


def users_import(records: list[Record], *, actor: User | None, report: ImportReport) -> None:
    """A batch of users: memberships, legacy roles, legacy identities and audit entries
    with them. An account another one already holds under any rule (canonical key,
    ``UPPER()``, ``lower()``) is flagged for the dedupe, and imported inactive if that
    one is active: login compares ``UPPER()``, the constraints the key and ``lower()``."""
    rows: list[_UserRow] = []
    for record in records:
        try:
            rows.append(_user_row(record))
        except InvalidInput as error:
            report.refuse(record, error.message)
    kept, organizations = _new_rows(rows, report) if rows else ([], {})
    if not kept:
        return
    folded = _folded([r.email for r in kept])
    for r in kept:
        r.key = canonical_email_key(r.email)
        r.upper, r.lower = folded[r.email]
    holders = (
        User._base_manager.annotate(upper=Upper("email"), lower=Lower("email"))
        .filter(
            Q(email_key__in={r.key for r in kept})
            | Q(upper__in={r.upper for r in kept})
            | Q(lower__in={r.lower for r in kept})
        )
        .values_list("email_key", "upper", "lower", "is_active")
    )
    seen: set[tuple[str, str]] = set()
    active: set[tuple[str, str]] = set()
    for key, upper, lower, is_active in holders:
        marks = {("key", key), ("upper", upper), ("lower", lower)}
        seen |= marks
        if is_active:
            active |= marks
    users = []
    for r in kept:
        marks = {("key", r.key), ("upper", r.upper), ("lower", r.lower)}
        r.flagged = bool(marks & seen)
        imported_active = r.active and not (marks & active)
        seen |= marks
        if imported_active:
            active |= marks
        user = User(
            email=r.email,
            email_key=r.key,
            full_name=r.full_name,
            is_active=imported_active,
            date_joined=r.joined,
            last_login=r.last_login,
            organization=organizations[r.memberships[0][0]] if r.memberships else None,
        )
        user.set_unusable_password()
        users.append(user)
    User.objects.bulk_create(users, batch_size=1000)
    _users_rows(kept, users, organizations, actor=actor)
    report.created["users"] += len(users)
    report.notes["flagged"] += sum(1 for r in kept if r.flagged)


def _users_rows(
    kept: list[_UserRow],
    users: list[User],
    organizations: dict[str, Organization],
    *,
    actor: User | None,
) -> None:
    memberships: dict[tuple[int, int], Membership] = {}
    roles, legacy = [], []
    audit: list[dict[str, Any]] = []
    for r, user in zip(kept, users, strict=True):
        for org, role in r.memberships:
            organization = organizations[org]
            held = memberships.get((user.pk, organization.pk))
            # One membership per pair, with the strongest role; every role text is kept.
            if held is None or ROLE_RANK.get(role, 0) > ROLE_RANK.get(held.role, 0):
                memberships[(user.pk, organization.pk)] = Membership(
                    user=user, organization=organization, role=role
                )
            roles.append(
                LegacyRole(user=user, organization=organization, role=role, legacy_id=r.legacy_id)
            )
        legacy.append(
            LegacyAccount(
                user=user,
                legacy_id=r.legacy_id,
                uuid=r.uuid,
                was_active=r.active,
                email_verified=r.verified,
                flagged_duplicate=r.flagged,
                vms=r.vms,
                networks=r.networks,
                files=r.files,
            )
        )
        audit.append(
            {
                "id": user.pk,
                "legacy_id": r.legacy_id,
                "email": r.email,
                "legacy_active": r.active,
                "is_active": user.is_active,
                "flagged_duplicate": r.flagged,
            }
        )
    Membership.objects.bulk_create(list(memberships.values()), batch_size=1000)
    LegacyRole.objects.bulk_create(roles, batch_size=1000)
    LegacyAccount.objects.bulk_create(legacy, batch_size=1000)
    # One entry per batch (up to a thousand accounts, each listed): an entry per account
    # doubled the import's time.
    fleet.audit_record(actor=actor, action="user.import", after={"accounts": audit})


def resource_parse(row: dict[str, Any]) -> str:
    resource = row_text(row, "resource", 32, required=True)
    if resource not in Quota.Resource.values:
        raise RowRefused(
            f"resource {resource!r} is unknown; use {', '.join(Quota.Resource.values)}."
        )
    return resource


def _holders(records: list[Record], report: ImportReport) -> list[tuple]:
    """(record, row, holder field, holder id, resource) of quota and usage rows, their
    holders looked up in two statements for the batch; the others refused."""
    parsed = []
    for record in records:
        row = record.fields or {}
        try:
            org_ref, user_ref = row_text(row, "organization", 128), row_text(row, "user", 128)
            if bool(org_ref) == bool(user_ref):
                raise RowRefused("give exactly one of organization and user.")
            parsed.append((record, row, org_ref, user_ref, resource_parse(row)))
        except InvalidInput as error:
            report.refuse(record, error.message)
    orgs = dict(
        LegacyOrganization.objects.filter(legacy_id__in={p[2] for p in parsed if p[2]}).values_list(
            "legacy_id", "organization_id"
        )
    )
    users = dict(
        LegacyAccount.objects.filter(
            legacy_id__in={p[3] for p in parsed if p[3]}, user__isnull=False
        ).values_list("legacy_id", "user_id")
    )
    found = []
    for record, row, org_ref, user_ref, resource in parsed:
        if org_ref and org_ref not in orgs:
            report.refuse(record, f"organization {org_ref!r} is not in the import or the database.")
        elif user_ref and user_ref not in users:
            report.refuse(record, f"user {user_ref!r} is not in the import or the database.")
        elif org_ref:
            found.append((record, row, "organization_id", orgs[org_ref], resource))
        else:
            found.append((record, row, "user_id", users[user_ref], resource))
    return found


def _quota_rows(found: list[tuple]) -> dict[tuple[str, int, str], Quota]:
    rows: dict[tuple[str, int, str], Quota] = {}
    for holder in ("organization_id", "user_id"):
        ids = {f[3] for f in found if f[2] == holder}
        if ids:
            for quota in Quota.objects.select_for_update().filter(**{f"{holder}__in": ids}):
                rows[(holder, getattr(quota, holder), quota.resource)] = quota
    return rows


def quantities_import(records: list[Record], *, section: str, report: ImportReport) -> None:
    """A batch of quota limits (``quotas``) or usages (``usage``): holders and their quota
    rows read in a few statements, then one bulk insert and one bulk update. A default
    limit is not stored, so a later change of the default reaches the account."""
    column = "limit" if section == "quotas" else "usage"
    parsed = []
    for record, row, holder, holder_id, resource in _holders(records, report):
        try:
            value = row_whole(row, column, required=section == "usage")
        except InvalidInput as error:
            report.refuse(record, error.message)
            continue
        parsed.append((holder, holder_id, resource, value))
    existing = _quota_rows([(None, None, h, i, r) for h, i, r, _ in parsed])
    creates: dict[tuple[str, int, str], Quota] = {}
    updates: dict[int, Quota] = {}
    now = timezone.now()
    for holder, holder_id, resource, value in parsed:
        key = (holder, holder_id, resource)
        if column == "limit" and value == settings.FLEET_QUOTA_DEFAULTS[resource]:
            value = None
        quota = existing.get(key) or creates.get(key)
        if quota is None:
            if column == "limit" and value is None:
                report.notes["defaults_skipped"] += 1
                continue
            creates[key] = Quota(
                resource=resource, updated_at=now, **{holder: holder_id, column: value}
            )
            report.created[section] += 1
        elif getattr(quota, column) == value:
            if column == "limit" and value is None:
                report.notes["defaults_skipped"] += 1
            else:
                report.unchanged[section] += 1
        else:
            setattr(quota, column, value)
            quota.updated_at = now
            if quota.pk is not None:
                updates[quota.pk] = quota
            report.created[section] += 1
    Quota.objects.bulk_create(list(creates.values()), batch_size=1000)
    _quotas_update(list(updates.values()), column, now)


def _quotas_update(rows: list[Quota], column: str, now: Any) -> None:
    """One ``UPDATE … FROM unnest(…)`` on PostgreSQL: ``bulk_update``'s CASE per row costs
    ten times more at a thousand rows; elsewhere ``bulk_update``."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        Quota.objects.bulk_update(rows, [column, "updated_at"], batch_size=1000)
        return
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(Quota._meta.db_table)} AS q SET {quote(column)} = v.value, "  # noqa: S608 - names from the model, values bound
            "updated_at = %s FROM (SELECT unnest(%s::bigint[]) AS id, "
            "unnest(%s::bigint[]) AS value) AS v WHERE q.id = v.id",
            [now, [q.pk for q in rows], [getattr(q, column) for q in rows]],
        )
