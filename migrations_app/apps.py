from django.apps import AppConfig


class MigrationsConfig(AppConfig):
    name = "migrations_app"
    verbose_name = "Migrations"

    def ready(self) -> None:
        from . import receivers

        receivers.connect()
