"""Cutover dashboard routes under /dashboard/."""

from django.urls import path

from .cutover import views

urlpatterns = [
    path("cutover/", views.cutover_dashboard, name="cutover-dashboard"),
    path("cutover/mappings/<int:pk>/reopen", views.mapping_reopen, name="cutover-mapping-reopen"),
]
