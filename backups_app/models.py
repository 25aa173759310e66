"""Cluster backups, service backups and ZFS replication live here."""
