from django.apps import AppConfig


class MigrationsConfig(AppConfig):
    name = "migrations_app"
    verbose_name = "Migrations"

    def ready(self) -> None:
        from fleet_app.access import rules_register

        from . import access_table

        rules_register(access_table.RULES)

        from .cutover import metrics, receivers  # noqa: F401 - metrics registers its collector

        receivers.connect()
