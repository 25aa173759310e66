from django.apps import AppConfig


class BackupsConfig(AppConfig):
    name = "backups_app"
    verbose_name = "Backups"

    def ready(self) -> None:
        from fleet_app.access import rules_register

        from . import access_table

        rules_register(access_table.RULES)

        # The quota jobs (manage.py quotas --verify/--sync) count each resource's real
        # usage through a source its owner registers: backup bytes are ours.
        from fleet_app.quotas import usage_source_register

        from .cluster_backups.services import backup_bytes_per_organization

        usage_source_register("backup_bytes", "organization", backup_bytes_per_organization)

        # The live demo fleet (DEMO_LIVE, runserver only) sends its nightly backups too.
        from fleet_app.demo_live import tick_hook_register

        from .demo import demo_backups_due

        tick_hook_register(demo_backups_due)

        # The demo (manage.py seed_demo) includes a backup of Cutover's own database.
        from fleet_app.signals import demo_seeded

        from .service_backups.services import own_database_service_ensure

        demo_seeded.connect(own_database_service_ensure, dispatch_uid="backups-own-database")

        # Prometheus collectors register themselves on import.
        from . import metrics  # noqa: F401
        from .zfs import metrics as zfs_metrics  # noqa: F401
