"""Routes of ``{collect_url}/backups``, included at the root beside the fleet's collect
routes (``collect_url`` is ``{base}/collect/api/systems``); a trailing slash is optional."""

from django.urls import re_path

from ..cluster_backups.api import collect

urlpatterns = [
    re_path(r"^collect/api/systems/backups/?$", collect.backups, name="collect-backups"),
    re_path(
        r"^collect/api/systems/backups/(?P<backup_id>[0-9a-fA-F-]{36})/?$",
        collect.backup,
        name="collect-backup",
    ),
]
