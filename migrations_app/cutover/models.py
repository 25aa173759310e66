"""Legacy credential mappings (``proxy_mappings``), their rotation and the cutover counts."""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from fleet_app.models import Inventory, Organization, System
from fleet_app.runs import Run


class RotationRun(Run):
    """A staff-initiated bulk rotation over the mappings matching ``filters``.

    Processed in primary-key chunks; ``cursor`` is the last mapping id done, written in
    the same transaction as the chunk, so a killed worker resumes exactly where it was.
    """

    task_name = "migrations_app.tasks.rotation_run_execute"

    filters = models.JSONField(default=dict, blank=True)
    cursor = models.BigIntegerField(default=0)
    chunk_size = models.PositiveIntegerField(default=1000)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"rotation run {self.pk} ({self.state})"


# The outcomes of a call that was not refused: answered 200, or never called.
NOT_REFUSED = ("", "200")


class MappingImportRun(Run):
    """An uploaded legacy mappings export: its plan (a dry run of the import) and, once
    staff confirm that plan, the import of the same file (an ``apply`` run naming it).

    The upload is kept sealed (``fleet_app.sealing``: it holds legacy tokens in clear)
    under ``stored_name`` in the default file storage, and removed when the import is
    done. Progress is in bytes of the file read (``done`` of ``total``); ``report`` holds
    what the import did or would do: counts, the first names, the first refusals.
    """

    task_name = "migrations_app.tasks.mapping_import_run_execute"

    class Mode(models.TextChoices):
        PLAN = "plan", "Plan (dry run)"
        APPLY = "apply", "Import"

    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.PLAN)
    file_name = models.CharField(max_length=255)
    stored_name = models.CharField(max_length=255, blank=True)
    size = models.PositiveBigIntegerField(default=0)
    # For rows without an organization column; the rows' own are resolved in the reach
    # of ``created_by``.
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    born_registered = models.BooleanField(default=False)
    plan = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="applies"
    )
    report = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"mapping import {self.pk} of {self.file_name} ({self.mode}, {self.state})"


class LegacyMapping(models.Model):
    """A legacy pair (``legacy_system_id`` + legacy token) and the native system it maps to.

    The legacy token is kept only as a keyed digest: it still authenticates the legacy
    client on ``/proxy/credentials`` and ``/api/Utils/freekey`` and is preserved, never
    overwritten, for audit. The life of a mapping is a series of first-time stamps:
    rotated (native credentials handed out), confirmed (first native call), fingerprinted
    (an inventory names this legacy id in ``facts.migration``), released (the legacy slot
    was freed).
    """

    legacy_system_id = models.CharField(max_length=128, unique=True)
    legacy_token_digest = models.CharField(max_length=64, editable=False)
    system = models.OneToOneField(System, on_delete=models.PROTECT, related_name="legacy_mapping")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Last contact known from the legacy side (import file) and from our proxy endpoint.
    legacy_last_seen_at = models.DateTimeField(null=True, blank=True)
    # The last /proxy/credentials call for this legacy id, whatever it was answered
    # (written outside the transaction that refused it, so a refusal leaves its trace).
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_outcome = models.CharField(max_length=3, blank=True, default="", db_default="")
    last_attempt_address = models.CharField(max_length=64, blank=True, default="", db_default="")
    # The last time the legacy pair was presented after the native credentials were used
    # (answered 409): a cluster restored from a backup taken before its cutover, which
    # needs re-opening.
    knocked_at = models.DateTimeField(null=True, blank=True)
    rotated_at = models.DateTimeField(null=True, blank=True)
    rotation_count = models.PositiveIntegerField(default=0)
    last_rotation_run = models.ForeignKey(
        RotationRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    confirmed_at = models.DateTimeField(null=True, blank=True)
    fingerprint_at = models.DateTimeField(null=True, blank=True)
    # What the cluster itself reported in facts.migration.migrated_at.
    migrated_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)
    reopened_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "proxy_mappings"
        indexes = [
            # Stragglers: not rotated yet, oldest first.
            models.Index(
                fields=["created_at", "id"],
                condition=Q(rotated_at__isnull=True),
                name="mapping_not_rotated_idx",
            ),
            # Credentials issued, never used: oldest rotation first.
            models.Index(
                fields=["rotated_at", "id"],
                condition=Q(rotated_at__isnull=False, confirmed_at__isnull=True),
                name="mapping_unconfirmed_idx",
            ),
            # Knocking after cutover: the few that presented their legacy pair once done.
            models.Index(
                fields=["-knocked_at"],
                condition=Q(knocked_at__isnull=False),
                name="mapping_knocked_idx",
            ),
            # The latest refused calls (the few whose last call was not answered 200).
            models.Index(
                fields=["-last_attempt_at"],
                condition=~Q(last_attempt_outcome__in=NOT_REFUSED),
                name="mapping_refused_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.legacy_system_id

    @property
    def state(self) -> str:
        """The furthest step reached, for lists and filters."""
        if self.fingerprint_at:
            return "fingerprinted"
        if self.confirmed_at:
            return "confirmed"
        if self.rotated_at:
            return "rotated"
        return "legacy"


class ProxyAttemptDay(models.Model):
    """How many ``/proxy/credentials`` calls were answered with each outcome (the HTTP
    status: 200, 400, 401, 403, 409, 429) on a day, fleet-wide: a few rows a day, which
    ``/metrics`` and the dashboard sum. What one mapping saw last is on the mapping."""

    day = models.DateField()
    outcome = models.CharField(max_length=3)
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["day", "outcome"]
        constraints = [
            models.UniqueConstraint(fields=["day", "outcome"], name="proxy_attempt_day_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.day}: {self.count} answered {self.outcome}"


class CutoverDay(models.Model):
    """Per-day deltas of the cutover counts, written with the change that causes them.

    The dashboard reads totals and the burn-down from these few hundred rows instead of
    counting a million mappings; ``cutover_counters_rebuild`` recomputes them from the
    mappings if they are ever in doubt.
    """

    day = models.DateField(primary_key=True)
    mappings = models.IntegerField(default=0)
    rotated = models.IntegerField(default=0)
    confirmed = models.IntegerField(default=0)
    fingerprinted = models.IntegerField(default=0)
    released = models.IntegerField(default=0)

    class Meta:
        ordering = ["day"]

    def __str__(self) -> str:
        return str(self.day)


class FingerprintAnomaly(models.Model):
    """An inventory whose ``facts.migration.from_legacy_system_id`` does not fit.

    ``unknown``: no mapping has that legacy id. ``mismatch``: the legacy id belongs to
    another system's mapping, or this system's mapping has another legacy id.
    """

    class Kind(models.TextChoices):
        UNKNOWN = "unknown", "Unknown legacy id"
        MISMATCH = "mismatch", "Legacy id of another system"

    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="+")
    inventory = models.ForeignKey(
        Inventory, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    claimed_legacy_system_id = models.CharField(max_length=128)
    expected_legacy_system_id = models.CharField(max_length=128, blank=True)
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    occurrences = models.PositiveIntegerField(default=1)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "fingerprint anomalies"
        constraints = [
            # One open anomaly per system and claim; later inventories bump occurrences.
            models.UniqueConstraint(
                fields=["system", "claimed_legacy_system_id"],
                condition=Q(resolved_at__isnull=True),
                name="anomaly_open_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.claimed_legacy_system_id} on system {self.system_id}"
