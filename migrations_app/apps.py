from django.apps import AppConfig


class MigrationsConfig(AppConfig):
    name = "migrations_app"
    verbose_name = "Migrations"

    def ready(self) -> None:
        from . import metrics, receivers  # noqa: F401 - metrics registers its collector

        receivers.connect()
