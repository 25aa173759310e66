import os
import sys

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class FleetConfig(AppConfig):
    name = "fleet_app"
    verbose_name = "Fleet"

    def ready(self) -> None:
        from . import access, access_table

        access.rules_register(access_table.RULES)
        # The admin has discovered every app's admin module by now (django.contrib.admin
        # comes first in INSTALLED_APPS): from here on each one answers to the table.
        from .admin.base import admin_registry_enforce_table

        admin_registry_enforce_table()
        # Permissions exist only after every app has migrated; keep the role groups in
        # step with them after each migrate (idempotent).
        post_migrate.connect(_sync_roles, dispatch_uid="fleet_roles_sync")
        # The demo fleet heartbeats while the development server serves (DEMO_LIVE).
        from . import demo_live

        if demo_live.should_start(sys.argv, os.environ):
            demo_live.start()


def _sync_roles(sender, using="default", **kwargs) -> None:
    from .roles import roles_sync

    roles_sync(using=using)
