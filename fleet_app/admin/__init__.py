"""Admin for the fleet: scoped to the staff user's organization subtree, audited.

- Every queryset comes from ``selectors.*_visible_to(request.user)``, so a row outside the
  user's subtree is "does not exist", and foreign-key choices are scoped the same way.
- Every change staff make through a form goes through ``AuditedModelAdmin``, which writes
  an audit row (before/after) in the transaction the admin opened for the change. Systems
  and organizations are created by their services, which audit themselves.
- The big tables (systems, inventories, changes, audit entries) never run a full-table
  COUNT: ``show_full_result_count`` is off and ``EstimatedCountPaginator`` asks PostgreSQL's
  planner for the size of an unfiltered list.
- A system secret exists in clear only in the response that shows it once; it is never
  put into a message, a session or a log.

The shared classes live in ``base``; the other apps' admins import them from here.
Django's autodiscovery imports this package: importing each area registers its models.
"""

from . import accounts, history, organizations, systems, tokens, users  # noqa: F401
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
    "form_action",
    "pretty_json",
    "table_row_estimate",
]
