from django.apps import AppConfig


class ControlPlaneConfig(AppConfig):
    """The project itself: its deploy checks (controlplane/production.py)."""

    name = "controlplane"
    verbose_name = "Control plane"

    def ready(self) -> None:
        from . import production  # noqa: F401 - registers the deploy check
