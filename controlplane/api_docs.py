"""The staff API's schema (/api/schema/) and its Swagger UI (/api/docs/), for staff only.

The schema lists every route, parameter and field of the staff API: a map worth keeping
from anyone who has not signed in. Both pages take the API's own authentication (session
or token) and need an active staff account. An anonymous caller of the schema gets the
API's 403 in JSON, whatever format it asked for; a browser on the docs page is sent to
the admin's login and comes back.

The docs page is drf-spectacular's split view: Swagger UI's start-up script is served as
a file (``?script``) rather than inlined, so the page runs under a Content Security Policy
without 'unsafe-inline' (templates/drf_spectacular/swagger_ui.html adds the nonce to the
one inline <style>).
"""

from django.contrib.auth.views import redirect_to_login
from django.urls import reverse
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework import exceptions
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer


class IsActiveStaff(BasePermission):
    """An authenticated, active staff account (any role)."""

    message = "Sign in with an active staff account to read the staff API's schema."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class StaffSchemaView(SpectacularAPIView):
    permission_classes = [IsActiveStaff]

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        # The schema is YAML by default; its errors are the API's JSON.
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return response


_REFUSALS = (
    exceptions.NotAuthenticated,
    exceptions.AuthenticationFailed,
    exceptions.PermissionDenied,
)


class StaffDocsView(SpectacularSwaggerSplitView):
    permission_classes = [IsActiveStaff]

    def handle_exception(self, exc):
        if isinstance(exc, _REFUSALS):
            return redirect_to_login(self.request.get_full_path(), reverse("admin:login"))
        return super().handle_exception(exc)
