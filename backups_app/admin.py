"""The admin of backups_app: each capability registers its own pages."""

from .cluster_backups import admin as cluster_backups_admin
from .service_backups import admin as service_backups_admin
from .zfs import admin as zfs_admin

__all__ = ["cluster_backups_admin", "service_backups_admin", "zfs_admin"]
