"""Accounts: the legacy platform's organizations, users, quotas and usage, imported."""

import logging
from collections.abc import Iterable
from typing import Any

from django.db import transaction

from fleet_app import services as fleet
from fleet_app.errors import InvalidInput
from fleet_app.models import Organization, User

from ..legacy_import import (
    ImportReport,
    LegacyImport,
    Record,
    row_text,
)
from .import_rows import quantities_import, users_import
from .models import (
    LegacyAccount,
    LegacyOrganization,
)

logger = logging.getLogger(__name__)


# --- Legacy import --------------------------------------------------------------------------


IMPORT_SECTIONS = ("organizations", "users", "quotas", "usage")
# The column a section's rows may not repeat within an import.
IMPORT_KEYS = {"organizations": "legacy_id", "users": "legacy_id"}


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


def accounts_import_feed(
    run: LegacyImport,
    section: str,
    records: Iterable[Record],
    *,
    under: Organization | None = None,
    actor: User | None = None,
) -> None:
    """Import the rows of one ``section`` in ``run``. Feed sections in ``IMPORT_SECTIONS``
    order (organizations, users, quotas, usage): later ones refer to earlier ones.
    Organizations (a few) go row by row, each its own savepoint; users, quotas and usage
    a batch at a time with bulk statements (``import_rows``), refused rows left out."""
    ctx = _ImportContext(under=under, actor=actor, report=run.report)

    def handle(rows: list[Record], report: ImportReport) -> None:
        if section == "users":
            users_import(rows, actor=actor, report=report)
            return
        if section in ("quotas", "usage"):
            quantities_import(rows, section=section, report=report)
            return
        for row in rows:
            try:
                with transaction.atomic():
                    created = _import_organization(row.fields or {}, ctx)
            except InvalidInput as error:
                report.refuse(row, error.message)
            else:
                (report.created if created else report.unchanged)[section] += 1

    run.feed(iter(records), section=section, handle=handle, key=IMPORT_KEYS.get(section))
