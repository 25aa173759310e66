"""Role groups, whose Django permissions are derived from the permission table.

The groups are ``operator`` (the platform's own staff) and the tenant roles ``admin``,
``support`` and ``reader``. ``access.py`` says what each may do; this module only keeps
Django's permission rows in step with it, so ``user.has_perm`` and the admin's own
checks agree with the table. Only a superuser may redefine a group.
"""

from django.contrib.auth.models import Group, Permission

from . import access

ROLE_OPERATOR = access.OPERATOR
ROLE_READER = access.READER
ROLE_SUPPORT = access.SUPPORT
ROLE_ADMIN = access.ADMIN
# The tenant roles (scoped to an organization subtree).
ROLES = access.TENANT_PERSONAS
ALL_ROLES = access.ROLE_GROUPS
_MODEL_ACTIONS = {"v": "view", "a": "add", "c": "change", "d": "delete"}


def role_permissions(role: str) -> set[tuple[str, str]]:
    """(app_label, codename) of every model permission the table grants ``role``."""
    wanted = set()
    for item in access.rules_all():
        if item.kind != "model":
            continue
        app_label, model_name = item.key.split(".")
        for letter in item.rights(role):
            if letter in _MODEL_ACTIONS:
                wanted.add((app_label, f"{_MODEL_ACTIONS[letter]}_{model_name}"))
    return wanted


def roles_sync(*, using: str = "default") -> None:
    """Create the role groups and give them their permissions (idempotent)."""
    permissions = {
        (p.content_type.app_label, p.codename): p
        for p in Permission.objects.using(using).select_related("content_type")
    }
    for role in ALL_ROLES:
        group, _ = Group.objects.using(using).get_or_create(name=role)
        group.permissions.set([permissions[k] for k in role_permissions(role) if k in permissions])
