"""Dashboard routes under /dashboard/."""

from django.urls import path

from . import views

urlpatterns = [
    path("fleet/", views.fleet_dashboard, name="fleet-dashboard"),
]
