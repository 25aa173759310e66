"""Accounts: the legacy platform's organizations, users, quotas and usage, imported."""

import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from fleet_app import services as fleet
from fleet_app.errors import InvalidInput
from fleet_app.models import Membership, Organization, Quota, User

from ..legacy_import import (
    ImportReport,
    LegacyImport,
    Record,
    row_flag,
    row_stamp,
    row_text,
    row_whole,
)
from .models import (
    LegacyAccount,
    LegacyOrganization,
)
from .selectors import accounts_with_email

logger = logging.getLogger(__name__)


# --- Legacy import --------------------------------------------------------------------------


IMPORT_SECTIONS = ("organizations", "users", "quotas", "usage")
# The column a section's rows may not repeat within an import.
IMPORT_KEYS = {"organizations": "legacy_id", "users": "legacy_id"}


def _memberships(row: dict[str, Any]) -> list[tuple[str, str]]:
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
                raise InvalidInput("memberships must be a list of {organization, role}.")
            pairs.append((str(item.get("organization") or "").strip(), str(item.get("role") or "")))
    else:
        raise InvalidInput("memberships must be a list or 'org:role;org:role' text.")
    for org, role in pairs:
        if not org:
            raise InvalidInput("a membership has no organization.")
        if len(role) > 32:
            raise InvalidInput(f"role {role[:40]!r} is longer than 32 characters.")
    return [(org, role.strip() or "member") for org, role in pairs]


class _ImportContext:
    def __init__(self, *, under: Organization | None, actor: User | None, report: ImportReport):
        self.under, self.actor, self.report = under, actor, report

    def organization(self, legacy_id: str) -> Organization:
        found = (
            LegacyOrganization.objects.select_related("organization")
            .filter(legacy_id=legacy_id)
            .first()
        )
        if found is None:
            raise InvalidInput(f"organization {legacy_id!r} is not in the import or the database.")
        return found.organization

    def user(self, legacy_id: str) -> User:
        found = LegacyAccount.objects.select_related("user").filter(legacy_id=legacy_id).first()
        if found is None or found.user is None:
            raise InvalidInput(f"user {legacy_id!r} is not in the import or the database.")
        return found.user


def _import_organization(row: dict[str, Any], ctx: _ImportContext) -> bool:
    legacy_id = row_text(row, "legacy_id", 128, required=True)
    name = row_text(row, "name", 255, required=True)
    kind = row_text(row, "kind", 16) or Organization.Kind.CUSTOMER
    parent_ref = row_text(row, "parent", 128)
    if LegacyOrganization.objects.filter(legacy_id=legacy_id).exists():
        return False
    parent = ctx.organization(parent_ref) if parent_ref else ctx.under
    if parent is None:
        raise InvalidInput("no parent: give a parent column or --under.")
    organization = fleet.organization_create(actor=ctx.actor, name=name, kind=kind, parent=parent)
    LegacyOrganization.objects.create(organization=organization, legacy_id=legacy_id)
    return True


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


def _import_user(row: dict[str, Any], ctx: _ImportContext) -> bool:
    legacy_id = row_text(row, "legacy_id", 128, required=True)
    email = row_text(row, "email", 254, required=True)
    if not _looks_like_email(email):
        raise InvalidInput(f"email {email!r} is not an e-mail address.")
    active = row_flag(row, "is_active", True)
    joined = row_stamp(row, "date_joined") or timezone.now()
    last_login = row_stamp(row, "last_login")
    full_name = row_text(row, "full_name", 255)
    memberships = [(ctx.organization(org), role) for org, role in _memberships(row)]
    if LegacyAccount.objects.filter(legacy_id=legacy_id).exists():
        return False
    email = User.objects.normalize_email(email)
    colliding = accounts_with_email(email)
    flagged = colliding.exists()
    # The legacy platform had both; here only one active account may hold the e-mail.
    imported_active = active and not colliding.filter(is_active=True).exists()
    user = User(
        email=email,
        full_name=full_name,
        is_active=imported_active,
        date_joined=joined,
        last_login=last_login,
        organization=memberships[0][0] if memberships else None,
    )
    user.set_unusable_password()
    user.save()
    Membership.objects.bulk_create(
        Membership(user=user, organization=org, role=role) for org, role in memberships
    )
    LegacyAccount.objects.create(
        user=user, legacy_id=legacy_id, was_active=active, flagged_duplicate=flagged
    )
    if flagged:
        ctx.report.notes["flagged"] += 1
    fleet.audit_record(
        actor=ctx.actor,
        action="user.import",
        obj=user,
        organization=user.organization,
        after={
            "legacy_id": legacy_id,
            "email": email,
            "legacy_active": active,
            "is_active": imported_active,
            "flagged_duplicate": flagged,
        },
    )
    return True


def _holder(row: dict[str, Any], ctx: _ImportContext) -> dict[str, Any]:
    org_ref, user_ref = row_text(row, "organization", 128), row_text(row, "user", 128)
    if bool(org_ref) == bool(user_ref):
        raise InvalidInput("give exactly one of organization and user.")
    return {"organization": ctx.organization(org_ref)} if org_ref else {"user": ctx.user(user_ref)}


def _resource(row: dict[str, Any]) -> str:
    resource = row_text(row, "resource", 32, required=True)
    if resource not in Quota.Resource.values:
        raise InvalidInput(
            f"resource {resource!r} is unknown; use {', '.join(Quota.Resource.values)}."
        )
    return resource


def _import_quota(row: dict[str, Any], ctx: _ImportContext) -> bool | None:
    holder, resource = _holder(row, ctx), _resource(row)
    limit = row_whole(row, "limit", required=False)
    if limit == settings.FLEET_QUOTA_DEFAULTS[resource]:
        limit = None  # the default: not stored, so a new default reaches this account
    existing = Quota.objects.select_for_update().filter(resource=resource, **holder).first()
    if limit is None and (existing is None or existing.limit is None):
        ctx.report.notes["defaults_skipped"] += 1
        return None
    if existing is not None and existing.limit == limit:
        return False
    if existing is None:
        Quota.objects.create(resource=resource, limit=limit, **holder)
    else:
        existing.limit, existing.updated_at = limit, timezone.now()
        existing.save(update_fields=["limit", "updated_at"])
    return True


def _import_usage(row: dict[str, Any], ctx: _ImportContext) -> bool:
    holder, resource = _holder(row, ctx), _resource(row)
    usage = row_whole(row, "usage", required=True)
    existing = Quota.objects.select_for_update().filter(resource=resource, **holder).first()
    if existing is not None and existing.usage == usage:
        return False
    if existing is None:
        Quota.objects.create(resource=resource, usage=usage, **holder)
    else:
        existing.usage, existing.updated_at = usage, timezone.now()
        existing.save(update_fields=["usage", "updated_at"])
    return True


# An importer returns True (created or changed), False (already there) or None (a default
# limit, which is not kept).
IMPORTERS: dict[str, Callable[[dict[str, Any], _ImportContext], bool | None]] = {
    "organizations": _import_organization,
    "users": _import_user,
    "quotas": _import_quota,
    "usage": _import_usage,
}


def accounts_import_feed(
    run: LegacyImport,
    section: str,
    records: Iterable[Record],
    *,
    under: Organization | None = None,
    actor: User | None = None,
) -> None:
    """Import the rows of one ``section`` in ``run``. Feed sections in ``IMPORT_SECTIONS``
    order (organizations, users, quotas, usage): later ones refer to earlier ones. Each
    row is its own savepoint, so a refused row leaves nothing behind."""
    importer = IMPORTERS[section]
    ctx = _ImportContext(under=under, actor=actor, report=run.report)

    def handle(rows: list[Record], report: ImportReport) -> None:
        for row in rows:
            try:
                with transaction.atomic():
                    created = importer(row.fields, ctx)
            except InvalidInput as error:
                report.refuse(row, error.message)
            else:
                if created is not None:
                    (report.created if created else report.unchanged)[section] += 1

    run.feed(iter(records), section=section, handle=handle, key=IMPORT_KEYS.get(section))
