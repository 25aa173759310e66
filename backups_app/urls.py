"""Dashboard routes under /dashboard/."""

from django.urls import path

from . import views

urlpatterns = [
    path("backups/", views.backup_dashboard, name="backup-dashboard"),
]
