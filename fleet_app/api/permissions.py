"""Staff API permission: an active staff account holding a role, scoped by organization."""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from ..roles import ROLES


def user_roles(user) -> set[str]:
    return set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))


class IsStaffWithRole(BasePermission):
    """Reads need any role; writes need Django's model permission for the action.

    Which rows the caller sees is decided by the view's queryset (``selectors.*_visible_to``),
    so an object outside the caller's organization subtree is a 404, not a 403.
    """

    message = "A staff account with the reader, support or admin role is required."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active and user.is_staff):
            return False
        if user.is_superuser:
            return True
        if request.method in SAFE_METHODS:
            return bool(user_roles(user))
        required = getattr(view, "write_permission", None)
        return bool(required) and user.has_perm(required)
