"""Service backups in the staff API."""
