"""Who may do what: one table for every model, admin action, route, dashboard and command.

Five personas. The platform's own: the **superuser**, and **operator** (a global role for
platform staff who run infrastructure; not scoped to an organization). Scoped to the
subtree of the user's organization: **admin**, **support** and **reader**. A staff
account with none of these is nobody: it reaches nothing but a page that says so.

Each app declares its rows in its own ``access.py`` (``rules_register`` at ``ready()``):
this module imports no other app. A rule names

- a *kind* (``model``, ``action``, ``route``, ``dashboard``, ``command``) and a *key*
  (``app_label.model``, ``app_label.model.action``, a URL name, a dashboard, a command);
- a *scope*: ``tenant`` (rows of the caller's subtree, found through ``org``), ``root``
  (fleet-wide figures: tenant personas only at the root organization, whose subtree is
  everything), ``shared`` (definitions every granted persona reads, such as the role
  groups), ``platform`` (infrastructure: superuser and operator only), ``superuser``,
  or ``public`` (system-facing routes with their own credentials);
- the rights of each persona: ``v``iew, ``a``dd, ``c``hange, ``d``elete, ``r``un.

Every surface asks ``allowed()``; a key with no rule is refused to everyone, superusers
included, so a model, route or command added later is closed until it is placed here.
``roles_sync`` derives the role groups' Django permissions from the model rows, so
Django's own checks agree with the table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db.models import Model, QuerySet

SUPERUSER = "superuser"
OPERATOR = "operator"
ADMIN = "admin"
SUPPORT = "support"
READER = "reader"
PERSONAS = (SUPERUSER, OPERATOR, ADMIN, SUPPORT, READER)
PLATFORM_PERSONAS = (SUPERUSER, OPERATOR)
TENANT_PERSONAS = (ADMIN, SUPPORT, READER)
# The role groups, strongest first: a user holding several is the strongest of them.
ROLE_GROUPS = (OPERATOR, ADMIN, SUPPORT, READER)

KINDS = ("model", "action", "route", "dashboard", "command")
TENANT, ROOT, SHARED, PLATFORM, SUPERUSER_ONLY, PUBLIC = (
    "tenant",
    "root",
    "shared",
    "platform",
    "superuser",
    "public",
)
SCOPES = (TENANT, ROOT, SHARED, PLATFORM, SUPERUSER_ONLY, PUBLIC)
RIGHTS = {"v": "view", "a": "add", "c": "change", "d": "delete", "r": "run"}

NO_ROLE_MESSAGE = "Your account has no role yet: ask an admin of your organization to give you one."


@dataclass(frozen=True)
class Rule:
    """One row of the permission table."""

    kind: str
    key: str
    scope: str
    grants: dict[str, str] = field(default_factory=dict)
    # Tenant-scoped models: the lookup from the row to its Organization ("" for the
    # organization itself), e.g. "system__organization".
    org: str | None = None
    note: str = ""
    # Dashboards and pages the header links to: their title there.
    title: str = ""

    def rights(self, persona: str | None) -> str:
        return self.grants.get(persona, "") if persona else ""


_rules: dict[tuple[str, str], Rule] = {}


class TableError(ValueError):
    """A rule that contradicts the model: infrastructure opened to a tenant, say."""


def rule(
    kind: str,
    key: str,
    scope: str,
    *,
    org: str | None = None,
    note: str = "",
    title: str = "",
    **grants: str,
) -> Rule:
    """A row; ``grants`` are persona=rights, e.g. ``admin="vacd", reader="v"``."""
    if kind not in KINDS or scope not in SCOPES:
        raise TableError(f"{kind} {key}: unknown kind or scope.")
    unknown = set(grants) - set(PERSONAS)
    if unknown:
        raise TableError(f"{kind} {key}: unknown persona {sorted(unknown)}.")
    for persona, rights in grants.items():
        if set(rights) - set(RIGHTS):
            raise TableError(f"{kind} {key}: unknown right in {rights!r} for {persona}.")
    if scope in (PLATFORM, SUPERUSER_ONLY) and any(grants.get(p) for p in TENANT_PERSONAS):
        raise TableError(f"{kind} {key}: the platform's own, but granted to a tenant persona.")
    if scope == SUPERUSER_ONLY and grants.get(OPERATOR):
        raise TableError(f"{kind} {key}: superuser only, but granted to the operator.")
    if kind == "model" and scope == TENANT and org is None:
        raise TableError(f"model {key}: tenant-scoped, but no path to its organization.")
    return Rule(kind, key, scope, dict(grants), org, note, title)


def rules_register(rules: Iterable[Rule]) -> None:
    for item in rules:
        _rules[(item.kind, item.key)] = item


def titled_rules() -> list[Rule]:
    """Rows with a header title, dashboards first, each kind in the apps' order."""
    titled = [item for item in _rules.values() if item.title]
    return sorted(titled, key=lambda item: item.kind != "dashboard")


def rules_all() -> list[Rule]:
    return sorted(_rules.values(), key=lambda r: (KINDS.index(r.kind), r.key))


def rule_for(kind: str, key: str) -> Rule | None:
    return _rules.get((kind, key))


def model_key(model: type[Model] | Model) -> str:
    return model._meta.label_lower


# --- Personas -------------------------------------------------------------------------------


def persona(user) -> str | None:
    """The user's persona, or None: anonymous, inactive, not staff, or holding no role.

    Cached on the user object: one query per request, whatever the number of checks.
    """
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return None
    if user.is_superuser:
        return SUPERUSER
    if not user.is_staff:
        return None
    if hasattr(user, "_cutover_persona"):
        return user._cutover_persona
    names = set(user.groups.filter(name__in=ROLE_GROUPS).values_list("name", flat=True))
    found = next((name for name in ROLE_GROUPS if name in names), None)
    # A tenant role means nothing without the organization it is scoped to.
    if found in TENANT_PERSONAS and user.organization_id is None:
        found = None
    user._cutover_persona = found
    return found


def is_platform(user) -> bool:
    return persona(user) in PLATFORM_PERSONAS


def _at_root(user) -> bool:
    return user.organization_id is not None and user.organization.parent_id is None


def allowed(user, kind: str, key: str, right: str = "v") -> bool:
    """May ``user`` exercise ``right`` (one letter of RIGHTS) on the surface ``key``?"""
    item = _rules.get((kind, key))
    if item is None:
        return False
    who = persona(user)
    if item.scope == PUBLIC:
        return True
    if right not in item.rights(who):
        return False
    if item.scope == ROOT and who in TENANT_PERSONAS:
        return _at_root(user)
    return True


def allowed_any(user, kind: str, key: str) -> bool:
    item = _rules.get((kind, key))
    return item is not None and any(allowed(user, kind, key, r) for r in item.rights(persona(user)))


def scope_queryset(user, queryset: QuerySet) -> QuerySet:
    """The rows of ``queryset`` the user may see: a tenant persona sees its subtree only;
    the platform sees all of what it may view; anybody else sees nothing."""
    item = _rules.get(("model", model_key(queryset.model)))
    who = persona(user)
    if item is None or not item.rights(who):
        return queryset.none()
    if who in PLATFORM_PERSONAS:
        return queryset
    if item.scope == ROOT:
        return queryset if _at_root(user) else queryset.none()
    if item.scope == SHARED:
        return queryset
    if item.scope != TENANT:
        return queryset.none()
    lookup = f"{item.org}__path__startswith" if item.org else "path__startswith"
    # One indexed prefix match on the materialized path of the user's organization.
    return queryset.filter(**{lookup: user.organization.path})


# --- The table as the README shows it -------------------------------------------------------


def table_markdown() -> str:
    """The permission table, as the README holds it (a test checks they are the same)."""
    header = "| kind | surface | scope | " + " | ".join(PERSONAS) + " |"
    lines = [header, "|" + "---|" * (3 + len(PERSONAS))]
    for item in rules_all():
        cells = [item.rights(p) or "—" for p in PERSONAS]
        if item.scope == PUBLIC:
            cells = ["own credentials"] + [""] * (len(PERSONAS) - 1)
        scope = item.scope + (f" ({item.org or 'self'})" if item.org is not None else "")
        key = f"`{item.key}`" + (f" {item.note}" if item.note else "")
        lines.append(f"| {item.kind} | {key} | {scope} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
