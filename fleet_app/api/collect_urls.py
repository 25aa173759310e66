"""Collect API routes under ``{base}/collect/api/systems``; a trailing slash is optional."""

from django.urls import re_path

from . import collect

urlpatterns = [
    re_path(r"^heartbeat/?$", collect.heartbeat, name="collect-heartbeat"),
    re_path(r"^inventory/?$", collect.inventory, name="collect-inventory"),
    re_path(r"^info/?$", collect.info, name="collect-info"),
]
