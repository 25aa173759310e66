"""Cluster backup tasks (thin wrappers around services)."""

from celery import shared_task

from . import services


@shared_task(acks_late=True, name="backups_app.cluster_backups.tasks.cluster_backups_prune_recent")
def cluster_backups_prune_recent() -> int:
    """Retention for the systems that uploaded lately; sent after uploads, swept by beat."""
    return services.cluster_backups_prune_recent()
