"""Cutover dashboard routes under /dashboard/."""

from django.urls import path

from .cutover import views

urlpatterns = [
    path("cutover/", views.cutover_dashboard, name="cutover-dashboard"),
    path("cutover/mappings/<int:pk>/reopen", views.mapping_reopen, name="cutover-mapping-reopen"),
    path("cutover/import/", views.mappings_import_page, name="mappings-import"),
    path(
        "cutover/import/<int:run_id>/",
        views.mappings_import_run_page,
        name="mappings-import-run",
    ),
]
