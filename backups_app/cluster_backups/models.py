"""Cluster backups: the encrypted configuration backups systems upload.

A stored blob lives in the blob store (``backups_app.storage``) under ``storage_key``; the
row is written only once the blob is complete, so a row always points at a whole object
whose SHA-256 is on the row.
"""

import uuid

from django.db import models
from django.utils import timezone

from fleet_app.models import Organization, System


class ClusterBackup(models.Model):
    """One encrypted configuration backup a system uploaded (ns8 ``send-cluster-backup``).

    The id is a random UUID: it is what the system and staff address the backup by, and
    it names the stored object, so the object key is known before the row exists.
    ``organization`` is copied from the system at upload so quota sums and staff scoping
    need no join.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="cluster_backups")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    filename = models.CharField(max_length=255)
    mimetype = models.CharField(max_length=128, default="application/octet-stream")
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=512, unique=True, editable=False)
    uploaded_at = models.DateTimeField(default=timezone.now, editable=False)
    # Set when a read found the stored bytes differ from ``sha256``: never served again.
    corrupt_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-uploaded_at"]
        indexes = [
            # A system's own list (newest first), retention (oldest first) and the
            # freshness dashboard's "latest backup per system".
            models.Index(fields=["system", "-uploaded_at"], name="bkp_cluster_sys_time_idx"),
            # Retention's sweep: the systems that uploaded lately.
            models.Index(fields=["uploaded_at"], name="bkp_cluster_time_idx"),
            # Quota: the bytes an organization stores.
            models.Index(fields=["organization", "size"], name="bkp_cluster_org_size_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.filename} of system {self.system_id} ({self.uploaded_at:%Y-%m-%d %H:%M})"


class SystemBackups(System):
    """A system seen from the backups side: the admin's "backups per system" list."""

    class Meta:
        proxy = True
        verbose_name = "system's backups"
        verbose_name_plural = "backups per system"
