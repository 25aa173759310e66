"""Admin for the fleet: scoped to the staff user's organization subtree, audited.

- Every queryset comes from ``selectors.*_visible_to(request.user)``, so a row outside the
  user's subtree is "does not exist", and foreign-key choices are scoped the same way.
- Every change staff make through a form goes through ``AuditedModelAdmin``, which writes
  an audit row (before/after) in the transaction the admin opened for the change. Systems
  and organizations are created by their services, which audit themselves.
- The big tables (systems, inventories, changes, audit entries) never run a full-table
  COUNT: ``show_full_result_count`` is off and ``EstimatedCountPaginator`` asks PostgreSQL's
  planner for the size of an unfiltered list.
- A system secret is shown once, on the page its POST redirects to; until then it waits in
  the session sealed (encrypted, authenticated, minutes long), never in a message or a log.
- Every action that deletes, re-issues, revokes, rotates, undoes or repairs asks first
  (``confirm.confirm_first``): a page with the count and the names, then a second POST.

The shared classes live in ``base``; the other apps' admins import them from here.
Django's autodiscovery imports this package: importing each area registers its models.
"""

from . import accounts, confirm, history, organizations, systems, tokens, users  # noqa: F401
from .base import (
    FORM_ACTION_PREFIX,
    AuditedModelAdmin,
    EstimatedCountPaginator,
    FleetModelAdmin,
    OrganizationFilter,
    ReadOnlyModelAdmin,
    SystemOrganizationFilter,
    TableAdminMixin,
    admin_registry_enforce_table,
    form_action,
    pretty_json,
    table_row_estimate,
)
from .confirm import confirm_first

__all__ = [
    "FORM_ACTION_PREFIX",
    "AuditedModelAdmin",
    "EstimatedCountPaginator",
    "FleetModelAdmin",
    "OrganizationFilter",
    "ReadOnlyModelAdmin",
    "SystemOrganizationFilter",
    "TableAdminMixin",
    "admin_registry_enforce_table",
    "confirm",
    "confirm_first",
    "form_action",
    "pretty_json",
    "table_row_estimate",
]
