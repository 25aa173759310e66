"""The URL confs the project includes for the staff API and the collect API; the views are
each capability's (``cluster_backups.api``, ``service_backups.api``)."""
