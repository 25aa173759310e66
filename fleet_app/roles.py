"""Roles: Django groups whose permissions are derived from the project's own apps.

- reader: view everything of the Cutover apps;
- support: reader, plus add and change (suspend a system, re-issue a secret);
- admin: every permission of the Cutover apps and of API tokens; may view (and so
  assign) the role groups, not redefine them.

Deriving from the action prefix means a model added later joins the roles without a
hand-kept list. What a role sees is further scoped to the user's organization subtree.
"""

from django.contrib.auth.models import Group, Permission
from django.db.models import Q

ROLE_READER = "reader"
ROLE_SUPPORT = "support"
ROLE_ADMIN = "admin"
ROLES = (ROLE_READER, ROLE_SUPPORT, ROLE_ADMIN)
CUTOVER_APPS = ("fleet_app", "migrations_app", "backups_app")
ROLE_ACTIONS = {
    ROLE_READER: ("view_",),
    ROLE_SUPPORT: ("view_", "add_", "change_"),
    ROLE_ADMIN: ("view_", "add_", "change_", "delete_"),
}


def roles_sync(*, using: str = "default") -> None:
    """Create the role groups and give them their permissions (idempotent)."""
    permissions = list(
        Permission.objects.using(using)
        .filter(content_type__app_label__in=CUTOVER_APPS)
        .select_related("content_type")
    )
    # Roles are global groups: an organization's admin may assign them and manage API
    # tokens, but only a superuser may redefine what a role grants.
    admin_extra = list(
        Permission.objects.using(using).filter(
            Q(content_type__app_label="knox")
            | Q(content_type__app_label="auth", codename__startswith="view_")
        )
    )
    for role in ROLES:
        group, _ = Group.objects.using(using).get_or_create(name=role)
        wanted = [p for p in permissions if p.codename.startswith(ROLE_ACTIONS[role])]
        if role == ROLE_ADMIN:
            wanted += admin_extra
        group.permissions.set(wanted)
