"""ZFS: storage hosts, datasets, sanoid-style snapshot policies, pull replication jobs,
their run rows and the divergence reports that wait for a staff decision.

``backups_app.models`` imports these by name, so the tables belong to ``backups_app``.
What a row means for ZFS is in ``backups_app.zfs``; what writes is in
``backups_app.zfs.services`` and, for what is read from the hosts, ``backups_app.zfs.hosts``.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from fleet_app.runs import Run, RunState

from . import names
from .planning import Policy
from .runner import host_key_validate

ACTIVE_STATES = (RunState.PENDING, RunState.RUNNING)


def _validate_dataset(value: str) -> None:
    try:
        names.dataset_validate(value)
    except names.InvalidName as exc:
        raise ValidationError(str(exc)) from None


def _validate_host_key(value: str) -> None:
    try:
        host_key_validate(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class StorageHost(models.Model):
    """A machine with ZFS pools, reached over SSH as ``user`` with its host key pinned.

    ``host_key`` is the one public key the host may present (``ssh-ed25519 AAAA…``): a
    host presenting another is refused, and nothing is learnt on first use.

    A row holds nothing that becomes a command: the binaries run, the ssh client and the
    private key are the workers' settings (``ZFS_BIN``, ``ZPOOL_BIN``, ``ZFS_SSH_BIN``,
    ``ZFS_SSH_KEY_PATH``), so whoever may edit a host can change where the workers connect,
    never what they execute. A host is local (its commands run on the worker, without SSH:
    the target of a pull replication, typically) only when the workers' settings name it
    in ``ZFS_LOCAL_HOSTS``; see ``is_local``.
    """

    name = models.SlugField(max_length=64, unique=True)
    address = models.CharField(max_length=255, blank=True, help_text="Host name or IP.")
    port = models.PositiveIntegerField(default=22)
    user = models.CharField(max_length=32, blank=True, help_text="The delegated operator.")
    host_key = models.CharField(
        max_length=1024,
        blank=True,
        validators=[_validate_host_key],
        help_text="Pinned public host key: 'ssh-ed25519 AAAA…'.",
    )
    # Detected, never typed: pool versions/features per pool, the operator's permissions.
    capabilities = models.JSONField(default=dict, blank=True, editable=False)
    checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        # No check constraint on the connection fields: whether a host needs them depends
        # on ZFS_LOCAL_HOSTS, which the database cannot see. clean() refuses an incomplete
        # remote host, and host_runner() refuses to build an SSH runner for one.

    def __str__(self) -> str:
        return self.name

    @property
    def is_local(self) -> bool:
        """The workers run on this host (named in ``settings.ZFS_LOCAL_HOSTS``)."""
        return self.name in settings.ZFS_LOCAL_HOSTS

    @property
    def is_reachable(self) -> bool:
        """Local, or every field an SSH connection needs is filled in."""
        return self.is_local or bool(self.address and self.user and self.host_key)

    def clean(self) -> None:
        if not self.is_reachable:
            raise ValidationError(
                "A host not named in ZFS_LOCAL_HOSTS needs an address, a user and its host key."
            )


class SnapshotPolicy(models.Model):
    """sanoid's template: how many snapshots of each period to keep, whether to take them
    and prune them, and when the newest one is late (sanoid's ``*_warn``/``*_crit``)."""

    name = models.SlugField(max_length=64, unique=True)
    frequently = models.PositiveSmallIntegerField(default=0)
    hourly = models.PositiveSmallIntegerField(default=48)
    daily = models.PositiveSmallIntegerField(default=30)
    weekly = models.PositiveSmallIntegerField(default=0)
    monthly = models.PositiveSmallIntegerField(default=6)
    yearly = models.PositiveSmallIntegerField(default=0)
    autosnap = models.BooleanField(default=True)
    autoprune = models.BooleanField(default=True)
    frequent_period = models.PositiveSmallIntegerField(default=15, help_text="Minutes.")
    # Empty: from the shortest period kept, as sanoid's defaults (hourly: 90 / 360 min).
    # The host's own sanoid takes and prunes: Cutover only lists the snapshots it finds,
    # whoever made them, and checks their freshness.
    monitor_only = models.BooleanField(
        default=False, help_text="Only read freshness: the host's own sanoid snapshots."
    )
    warn_minutes = models.PositiveIntegerField(null=True, blank=True)
    crit_minutes = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "snapshot policies"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def as_policy(self) -> Policy:
        return Policy(
            frequently=self.frequently,
            hourly=self.hourly,
            daily=self.daily,
            weekly=self.weekly,
            monthly=self.monthly,
            yearly=self.yearly,
            autosnap=self.autosnap,
            autoprune=self.autoprune,
            frequent_period=self.frequent_period,
        )


class Dataset(models.Model):
    """A ZFS dataset on a host; with a policy, Cutover takes and prunes its snapshots.

    ``newest_snapshot_*`` and ``snapshot_count`` are what the last listing saw (a snapshot
    job or a replication run): the freshness check and the dashboard read them.
    """

    host = models.ForeignKey(StorageHost, on_delete=models.PROTECT, related_name="datasets")
    name = models.CharField(max_length=255, validators=[_validate_dataset])
    policy = models.ForeignKey(
        SnapshotPolicy, null=True, blank=True, on_delete=models.PROTECT, related_name="datasets"
    )
    next_snapshot_at = models.DateTimeField(default=timezone.now)
    newest_snapshot = models.CharField(max_length=255, blank=True, editable=False)
    newest_snapshot_at = models.DateTimeField(null=True, blank=True, editable=False)
    snapshot_count = models.PositiveIntegerField(default=0, editable=False)
    listed_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["host__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["host", "name"], name="zfs_dataset_host_name_uniq"),
        ]
        indexes = [
            # The beat tick: datasets with a policy whose next snapshot job is due.
            models.Index(
                fields=["next_snapshot_at"],
                condition=Q(policy__isnull=False),
                name="zfs_dataset_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.host.name}:{self.name}"


class ReplicationJob(models.Model):
    """Pull ``source`` to ``target`` every ``every_minutes``: the target's host runs
    ``ssh operator@source zfs send … | zfs receive …``.

    ``guarantee`` and ``refusal`` are the last capability assessment: a refused job does
    not run until what it lacks is granted (the refusal names the permission).
    """

    class Guarantee(models.TextChoices):
        UNKNOWN = "", "Not assessed"
        RESUMABLE = "resumable", "Resumable"
        HOLDS = "incremental-with-holds", "Incremental with holds"
        NONE = "none", "None"

    name = models.SlugField(max_length=64, unique=True)
    source = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="replicated_to")
    target = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="replicated_from")
    recursive = models.BooleanField(default=False, help_text="Also each child dataset.")
    every_minutes = models.PositiveIntegerField(default=60)
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(default=timezone.now)
    guarantee = models.CharField(
        max_length=32, choices=Guarantee.choices, blank=True, editable=False
    )
    refusal = models.TextField(blank=True, editable=False)
    assessed_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The newest snapshot the target has, and when the source took it (lag = source's
    # newest snapshot time minus this).
    last_snapshot = models.CharField(max_length=255, blank=True, editable=False)
    last_snapshot_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["source", "target"], name="zfs_job_pair_uniq"),
            models.CheckConstraint(
                condition=~Q(source=models.F("target")), name="zfs_job_not_to_itself"
            ),
        ]
        indexes = [
            # The beat tick: enabled jobs that are due.
            models.Index(fields=["next_run_at"], condition=Q(enabled=True), name="zfs_job_due_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Refuse a target that overlaps another job's (the same dataset, or one inside
        the other's tree): two jobs would take turns rewriting it."""
        if self.target_id is None:
            return
        clash = overlapping_job(self)
        if clash is not None:
            raise ValidationError(
                {
                    "target": f"{self.target} overlaps the target of job {clash.name} "
                    f"({clash.target}{', recursive' if clash.recursive else ''}): "
                    "two jobs would take turns rewriting it."
                }
            )

    @property
    def hold_tag(self) -> str:
        """The hold this job keeps on its common snapshot (one per job: two jobs from one
        source each keep their own base)."""
        return f"cutover_job{self.pk}"


def _overlaps(a: str, a_tree: bool, b: str, b_tree: bool) -> bool:
    return a == b or (a_tree and b.startswith(a + "/")) or (b_tree and a.startswith(b + "/"))


def overlapping_job(job: "ReplicationJob") -> "ReplicationJob | None":
    """Another job whose target is ``job``'s target or inside (or around) its tree."""
    target = Dataset.objects.select_related("host").get(pk=job.target_id)
    others = ReplicationJob.objects.filter(target__host_id=target.host_id).select_related("target")
    if job.pk:
        others = others.exclude(pk=job.pk)
    for other in others:
        if _overlaps(target.name, job.recursive, other.target.name, other.recursive):
            return other
    return None


class ReplicatedDataset(models.Model):
    """One dataset of a job (the job's own, or a child of a recursive job): its state,
    lag, bytes and error, and what the job keeps on it (the held snapshot, the GUID of the
    newest snapshot the target received). A fix on one dataset changes only its row.

    ``source_name`` is where the data is pulled from now: the source dataset's name, or
    the name it moved to when staff approved following it (that child only).
    """

    class State(models.TextChoices):
        PENDING = "pending", "Not run yet"
        OK = "ok", "In sync"
        FAILED = "failed", "Failed"
        DIVERGED = "diverged", "Diverged"
        STOPPED = "stopped", "Stopped: target moved or vanished"

    job = models.ForeignKey(ReplicationJob, on_delete=models.CASCADE, related_name="datasets")
    source_dataset = models.CharField(max_length=255)
    target_dataset = models.CharField(max_length=255)
    source_name = models.CharField(max_length=255)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    message = models.TextField(blank=True)
    held_snapshot = models.CharField(max_length=255, blank=True)
    last_snapshot = models.CharField(max_length=255, blank=True)
    # ZFS GUIDs are unsigned 64-bit: kept as text.
    last_snapshot_guid = models.CharField(max_length=24, blank=True)
    last_snapshot_at = models.DateTimeField(null=True, blank=True)
    source_newest = models.CharField(max_length=255, blank=True)
    source_newest_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_bytes = models.PositiveBigIntegerField(default=0)
    total_bytes = models.PositiveBigIntegerField(default=0)
    last_run = models.ForeignKey(
        "ReplicationRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "source_dataset"]
        constraints = [
            models.UniqueConstraint(fields=["job", "source_dataset"], name="zfs_repl_ds_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.job}: {self.source_dataset} ({self.state})"

    @property
    def lag_seconds(self) -> float | None:
        if self.source_newest_at and self.last_snapshot_at:
            return max(0.0, (self.source_newest_at - self.last_snapshot_at).total_seconds())
        return None


class SnapshotRun(Run):
    """One snapshot job on one dataset: what the plan said and what was done."""

    task_name = "backups_app.zfs.tasks.snapshot_run_execute"

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="snapshot_runs")
    created = models.JSONField(default=list, blank=True)
    destroyed = models.JSONField(default=list, blank=True)
    spared = models.JSONField(default=dict, blank=True)
    refused = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            # One snapshot job per dataset at a time: the claim is the INSERT.
            models.UniqueConstraint(
                fields=["dataset"],
                condition=Q(state__in=ACTIVE_STATES),
                name="zfs_snaprun_one_active",
            ),
        ]

    def __str__(self) -> str:
        return f"snapshot run {self.pk} of {self.dataset_id} ({self.state})"


class ReplicationRun(Run):
    """One pull of one dataset of a job: phase, plan, from/to snapshot, bytes, duration.

    ``source_dataset`` is the dataset's name (a recursive job runs each child), so the
    partial unique constraint allows one active run per (job, dataset).
    """

    task_name = "backups_app.zfs.tasks.replication_run_execute"

    job = models.ForeignKey(ReplicationJob, on_delete=models.PROTECT, related_name="runs")
    source_dataset = models.CharField(max_length=255)
    target_dataset = models.CharField(max_length=255)
    plan_kind = models.CharField(max_length=32, blank=True)
    from_snapshot = models.CharField(max_length=255, blank=True)
    to_snapshot = models.CharField(max_length=255, blank=True)
    bytes = models.PositiveBigIntegerField(default=0)
    duration_seconds = models.FloatField(default=0)
    guarantee = models.CharField(max_length=32, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["job", "source_dataset"],
                condition=Q(state__in=ACTIVE_STATES),
                name="zfs_replrun_one_active",
            ),
        ]
        indexes = [
            # The dashboard and the check: a job's latest runs.
            models.Index(fields=["job", "-id"], name="zfs_replrun_job_idx"),
        ]

    def __str__(self) -> str:
        return f"replication run {self.pk} of {self.job_id} ({self.state})"


class DivergenceReport(models.Model):
    """A replication that stopped because the target went its own way (or the source
    moved): the report, the fixes offered, and the staff decision.

    Nothing is destroyed or renamed until a staff user approves one fix; the approval and
    its outcome are on the row and in the audit log.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Awaiting approval"
        APPROVED = "approved", "Approved, queued"
        APPLYING = "applying", "Fix running"
        APPLIED = "applied", "Fix applied"
        FAILED = "failed", "Fix failed"
        DISMISSED = "dismissed", "Dismissed"

    job = models.ForeignKey(ReplicationJob, on_delete=models.PROTECT, related_name="divergences")
    run = models.ForeignKey(
        ReplicationRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source_dataset = models.CharField(max_length=255)
    target_dataset = models.CharField(max_length=255)
    kind = models.CharField(max_length=32, blank=True)
    reason = models.TextField()
    last_common = models.CharField(max_length=255, blank=True)
    source_only = models.JSONField(default=list, blank=True)
    target_only = models.JSONField(default=list, blank=True)
    name_clashes = models.JSONField(default=list, blank=True)
    source_moved_to = models.CharField(max_length=255, blank=True)
    fixes = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    approved_fix = models.CharField(max_length=32, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    outcome = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One undecided report per (job, dataset): a run that stops again on the same
            # divergence updates it rather than piling up copies.
            models.UniqueConstraint(
                fields=["job", "source_dataset"],
                condition=Q(status__in=["open", "approved", "applying"]),
                name="zfs_divergence_one_open",
            ),
        ]

    def __str__(self) -> str:
        return f"divergence of {self.job} on {self.source_dataset} ({self.status})"

    def fix(self, kind: str) -> dict | None:
        return next((f for f in self.fixes if f.get("kind") == kind), None)
