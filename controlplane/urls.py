"""Top-level routes: system-facing endpoints, the staff API, dashboards and the admin."""

from django.conf import settings
from django.contrib import admin
from django.http import HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.urls import include, is_valid_path, path, re_path
from django.views import defaults
from django.views.generic import RedirectView

from controlplane.api_docs import StaffDocsView, StaffSchemaView
from fleet_app import views as fleet_views
from fleet_app.api import collect
from fleet_app.metrics import metrics_view


def healthz(request):
    """Liveness for load balancers: touches nothing, so it also serves as the bare
    baseline the ingest benchmark compares against."""
    return HttpResponse(b"ok", content_type="text/plain")


def not_found(request, exception=None):
    """An address no route matches: the staff API answers in its own JSON shape, one
    sentence; everything else gets Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "No staff API route matches this address."}, status=404)
    return defaults.page_not_found(request, exception)


def api_not_found(request, rest: str = ""):
    """Any /api/ address no staff API route matches, routed here so the answer is the
    API's JSON 404 even with DEBUG on (Django's debug 404 page skips ``handler404``). An
    address that exists with a trailing slash is redirected there, as ``APPEND_SLASH``
    would."""
    path = request.path_info
    if settings.APPEND_SLASH and not path.endswith("/") and is_valid_path(f"{path}/"):
        query = request.META.get("QUERY_STRING", "")
        return HttpResponsePermanentRedirect(request.path + "/" + (f"?{query}" if query else ""))
    return not_found(request)


handler404 = not_found
handler403 = "fleet_app.access_http.permission_denied"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    re_path(r"^backend/api/systems/register/?$", collect.register, name="collect-register"),
    path("", include("backups_app.api.collect_urls")),
    path("collect/api/systems/", include("fleet_app.api.collect_urls")),
    path("", include("migrations_app.api.proxy_urls")),
    path("api/cutover/", include("migrations_app.api.urls")),
    path("api/backups/", include("backups_app.api.urls")),
    path("api/bundles/", include("migrations_app.api.bundle_urls")),
    path("api/", include("fleet_app.api.urls")),
    path("api/schema/", StaffSchemaView.as_view(), name="api-schema"),
    path("api/docs/", StaffDocsView.as_view(url_name="api-schema"), name="api-docs"),
    # The link a cluster shows for itself (ns8 get-subscription: the portal URL + its id).
    re_path(r"^systems/(?P<system_key>[^/]+)/?$", fleet_views.system_page, name="system-page"),
    path("dashboard/", include("fleet_app.urls")),
    path("dashboard/", include("migrations_app.urls")),
    path("dashboard/", include("backups_app.urls")),
    path("admin/", admin.site.urls),
    path("dashboard/zfs/", include("backups_app.zfs.urls")),
    path("", RedirectView.as_view(pattern_name="fleet-dashboard", permanent=False), name="home"),
    # Last: what no route above matched under /api/.
    re_path(r"^api/(?P<rest>.*)$", api_not_found, name="api-not-found"),
]

admin.site.site_header = "Cutover"
admin.site.site_title = "Cutover"
admin.site.index_title = "Control plane"
