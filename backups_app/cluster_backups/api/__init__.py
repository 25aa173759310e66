"""Cluster backups over HTTP: the collect API (systems) and the staff API."""
