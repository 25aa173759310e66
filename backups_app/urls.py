"""Dashboard routes under /dashboard/."""

from django.urls import path

from . import views
from .service_backups import views as service_views

urlpatterns = [
    path("backups/", views.backup_dashboard, name="backup-dashboard"),
    path("backups/restore/", service_views.restore_page, name="backup-restore"),
    path(
        "backups/restore/<int:run_id>/",
        service_views.restore_run_page,
        name="backup-restore-run",
    ),
]
