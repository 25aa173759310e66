"""The permission table on the web: dashboards, refusals and the staff API.

One check per surface, all reading access.py: ``dashboard`` for pages, ``TablePermission``
for every staff API view (the default permission class), and ``refused`` for what the
admin, a page or the API turned away, which also leaves an audit entry.
"""

import functools
import logging

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render
from django.urls import reverse
from rest_framework import exceptions
from rest_framework.permissions import SAFE_METHODS, BasePermission

from . import access, services

logger = logging.getLogger(__name__)


def refusal_record(request, *, what: str) -> None:
    """An audit entry for a signed-in user turned away (anonymous callers are not
    audited: they are nobody, and they are many)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return
    services.audit_record(
        actor=user,
        action="access.refused",
        obj=None,
        after={"method": request.method, "path": request.path[:500], "what": what},
        organization=user.organization if user.organization_id else None,
    )


def _refusal_message(request, key: str, kind: str = "dashboard") -> str:
    if access.persona(request.user) is None:
        return access.NO_ROLE_MESSAGE
    item = access.rule_for(kind, key)
    if item is not None and item.scope == access.ROOT:
        return TablePermission.root_message
    return "This page belongs to the platform's staff: your role does not reach it."


def dashboard(key: str, *, kind: str = "dashboard", write: str = "c"):
    """A page whose row in the table is ``dashboard`` ``key`` (or ``kind`` ``key``, for a
    page that is not a dashboard, such as a system's or one run's): anonymous and non-staff
    callers go to the login, refused ones get a 403 page that says why (and an audit
    entry). A write (any method but GET and HEAD) needs the row's ``write`` right."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(request, *args, **kwargs):
            # Not staff: the admin's login, as for every staff page.
            if not (request.user.is_authenticated and request.user.is_staff):
                return redirect_to_login(request.get_full_path(), "admin:login")
            right = "v" if request.method in SAFE_METHODS else write
            if not access.allowed(request.user, kind, key, right):
                refusal_record(request, what=f"{kind} {key}")
                title = "Not available"
                context = {
                    **admin.site.each_context(request),
                    "is_nav_sidebar_enabled": False,
                    "title": title,
                    "message": _refusal_message(request, key, kind),
                    "show_fleet_link": access.allowed(
                        request.user, "dashboard", "fleet-dashboard", "v"
                    ),
                }
                return render(request, "refused.html", context, status=403)
            return view(request, *args, **kwargs)

        wrapped.access_dashboard = key
        return wrapped

    return decorator


def links(request) -> dict:
    """Context processor: the header's links, only to the pages the user may open."""
    user = getattr(request, "user", None)
    if user is None or access.persona(user) is None:
        return {"cutover_links": []}
    found = [
        {"url": reverse(item.key), "title": item.title}
        for item in access.titled_rules()
        if access.allowed(user, item.kind, item.key, "v")
    ]
    return {"cutover_links": found}


def permission_denied(request, exception=None):
    """``handler403``: Django's 403 page, and an audit entry for the signed-in caller."""
    from django.views import defaults

    # The exception's text, where code raised one, says what was refused.
    refusal_record(request, what=str(exception or "") or "page")
    return defaults.permission_denied(request, exception)


class TablePermission(BasePermission):
    """Every staff API view: the route's row must grant ``v`` (reads) or ``c`` (writes).

    Which rows the caller sees is the view's queryset (scoped selectors), so an object
    outside the caller's subtree is a 404, not a 403.
    """

    message = "Your role does not reach this part of the staff API."
    root_message = (
        "These figures are fleet-wide: they are open to the platform's staff and to staff "
        "with a role at the root organization."
    )

    def has_permission(self, request, view) -> bool:
        match = request.resolver_match
        key = match.url_name if match is not None else ""
        right = "v" if request.method in SAFE_METHODS else "c"
        if access.allowed(request.user, "route", key, right):
            return True
        item = access.rule_for("route", key)
        if request.user.is_authenticated and access.persona(request.user) is None:
            self.message = access.NO_ROLE_MESSAGE
        elif item is not None and item.scope == access.ROOT:
            self.message = self.root_message
        return False


def api_exception_handler(exc, context):
    """DRF's handler, plus an audit entry when a signed-in caller is refused."""
    # Imported here: DRF's views module reads the settings that name this module.
    from rest_framework.views import exception_handler

    response = exception_handler(exc, context)
    if isinstance(exc, exceptions.PermissionDenied) and response is not None:
        request = context.get("request")
        if request is not None:
            refusal_record(request, what="api")
    return response
