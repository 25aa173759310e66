from django.apps import AppConfig


class BackupsConfig(AppConfig):
    name = "backups_app"
    verbose_name = "Backups"
