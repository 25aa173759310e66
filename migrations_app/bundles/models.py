"""Bundles: a signed, checked copy of part of the fleet's data, moved to another instance.

An export writes a bundle (a directory, or one tar split into chunks) and records itself
with a sequence number per source; an import verifies it whole, plans it against the
target's rows, and applies it in checkpointed batches.
"""

import uuid

from django.db import models
from django.utils import timezone

from fleet_app.runs import Run


class BundleSelection(models.Model):
    """A named, staff-defined selection: which organization subtrees and which kinds go."""

    name = models.SlugField(max_length=64, unique=True)
    organizations = models.JSONField(
        default=list, help_text="Slugs of the organizations whose subtrees go."
    )
    kinds = models.JSONField(default=list, blank=True, help_text="Empty: every kind.")
    inventories = models.CharField(
        max_length=8, choices=[("latest", "Latest"), ("full", "Full history")], default="latest"
    )
    credentials = models.BooleanField(
        default=False, help_text="Carry credential digests (needs its own permission)."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class BundleExport(Run):
    """One export: what it selected, where it wrote, and what it held (manifest hash).

    ``sequence`` grows by one per export of this instance; an importer refuses a bundle
    whose sequence is older than one it already applied from the same signer. ``state``
    names the file of row digests the next incremental export compares against.
    """

    task_name = "migrations_app.tasks.bundle_export_execute"

    bundle_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    sequence = models.PositiveBigIntegerField(unique=True)
    selection = models.ForeignKey(
        BundleSelection, null=True, blank=True, on_delete=models.SET_NULL, related_name="exports"
    )
    # The resolved selection (organization slugs, kinds, options), as the manifest holds it.
    scope = models.JSONField(default=dict)
    # A stable key of the scope: incrementals compare against the last export of this key.
    scope_key = models.CharField(max_length=64, db_index=True)
    base = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    format = models.CharField(max_length=8, default="dir")
    chunk_size = models.PositiveBigIntegerField(null=True, blank=True)
    compress = models.BooleanField(default=False)
    output = models.CharField(max_length=1024, blank=True)
    state_path = models.CharField(max_length=1024, blank=True)
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    rows = models.PositiveBigIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"export {self.sequence} ({self.state})"


class BundleImport(Run):
    """One import of a bundle: verified, planned, then (once approved) applied.

    ``checkpoint`` is the last batch written (kind and row offset), saved in the same
    transaction as the batch, so a killed import resumes after it.
    """

    task_name = "migrations_app.tasks.bundle_import_execute"

    path = models.CharField(max_length=1024)
    bundle_id = models.UUIDField(null=True, blank=True, db_index=True)
    base_bundle_id = models.UUIDField(null=True, blank=True)
    signer = models.CharField(max_length=32, blank=True)
    sequence = models.PositiveBigIntegerField(null=True, blank=True)
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    options = models.JSONField(default=dict, blank=True)
    plan = models.JSONField(default=dict, blank=True)
    checkpoint = models.JSONField(default=dict, blank=True)
    apply = models.BooleanField(default=False)
    approved_at = models.DateTimeField(null=True, blank=True)
    applied_at = models.DateTimeField(null=True, blank=True)
    written = models.PositiveBigIntegerField(default=0)
    # A pull from another instance (blank for a file): the source's address, its staff API
    # token sealed (fleet_app.sealing, cleared when the pull ends), the selection asked for,
    # the source's export run whose chunks these are, and the bytes fetched and verified.
    remote_url = models.CharField(max_length=1024, blank=True)
    remote_token = models.TextField(blank=True)
    remote_request = models.JSONField(default=dict, blank=True)
    remote_export = models.PositiveBigIntegerField(null=True, blank=True)
    bytes_total = models.PositiveBigIntegerField(default=0)
    bytes_fetched = models.PositiveBigIntegerField(default=0)
    fetched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The last applied sequence of a signer: the replay check.
            models.Index(fields=["signer", "-sequence"], name="bundle_import_signer_seq_idx"),
        ]

    def __str__(self) -> str:
        return f"import of {self.bundle_id or self.path} ({self.state})"


class BundleRowState(models.Model):
    """The digest of a row as the last import from ``signer`` wrote it.

    A target row whose digest differs from this one changed on the target since: the next
    import calls that a conflict instead of overwriting it.
    """

    signer = models.CharField(max_length=32)
    kind = models.CharField(max_length=32)
    key = models.CharField(max_length=255)
    digest = models.CharField(max_length=32)

    class Meta:
        constraints = [
            # The plan looks rows up by (signer, kind, key) in batches.
            models.UniqueConstraint(fields=["signer", "kind", "key"], name="bundle_rowstate_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.key}"


class TrustedBundleKey(models.Model):
    """A public Ed25519 key whose signed bundles this instance imports."""

    key_id = models.CharField(max_length=32, unique=True)
    public_key = models.CharField(max_length=64, help_text="Raw public key, hex.")
    name = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"{self.name or 'key'} {self.key_id}"
