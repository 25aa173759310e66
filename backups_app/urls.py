"""Dashboard routes under /dashboard/."""

from django.urls import path

# The URLconf always imports this module: registering the /metrics collector here means
# it is in place before the first scrape, in every process that serves requests.
from . import metrics, views  # noqa: F401

urlpatterns = [
    path("backups/", views.backup_dashboard, name="backup-dashboard"),
]
