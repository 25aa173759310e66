"""The tables of backups_app, one module per capability.

Each capability keeps its models beside its services (``cluster_backups``,
``service_backups``, ``zfs``); they are imported here by name so Django finds them under
the ``backups_app`` label, and their table names stay ``backups_app_<model>``.
"""

from .cluster_backups.models import ClusterBackup, SystemBackups
from .service_backups.models import BackupRun, BackupSchedule, RestoreRun, Service
from .zfs.models import (
    Dataset,
    DivergenceReport,
    ReplicatedDataset,
    ReplicationJob,
    ReplicationRun,
    SnapshotPolicy,
    SnapshotRun,
    StorageHost,
)

__all__ = [
    "BackupRun",
    "BackupSchedule",
    "ClusterBackup",
    "Dataset",
    "DivergenceReport",
    "ReplicatedDataset",
    "ReplicationJob",
    "ReplicationRun",
    "RestoreRun",
    "Service",
    "SnapshotPolicy",
    "SnapshotRun",
    "StorageHost",
    "SystemBackups",
]
