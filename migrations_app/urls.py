"""Cutover dashboard routes under /dashboard/."""

from django.urls import path

from .cutover import views

urlpatterns = [
    path("cutover/", views.cutover_dashboard, name="cutover-dashboard"),
]
