"""The replication dashboard, at /dashboard/zfs/."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.zfs_dashboard, name="zfs-dashboard"),
]
