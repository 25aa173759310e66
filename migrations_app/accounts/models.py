"""Accounts: the legacy platform's identities, user dedupe runs and their journal, quota runs.

User ids in the dedupe tables are plain integers, not foreign keys: a merge may delete an
account and its undo must find the id again, and a foreign key to the user would put
these tables into the model graph the merge walks.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from fleet_app.models import Organization, User
from fleet_app.runs import Run


class LegacyOrganization(models.Model):
    """The legacy platform's id of an imported organization (re-imports find it here)."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="legacy_organization"
    )
    legacy_id = models.CharField(max_length=128, unique=True)
    imported_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.legacy_id


class LegacyAccount(models.Model):
    """An account as the legacy platform had it.

    ``was_active`` is the legacy active flag: an account whose e-mail collided
    case-insensitively with an active one is imported inactive (two active accounts
    cannot share an e-mail here) and ``flagged_duplicate``, and the dedupe still counts
    it as active when it picks the survivor. ``user`` is NULL once a dedupe with
    ``--delete`` removed the account; the row stays so a re-import does not bring it back.
    """

    user = models.OneToOneField(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="legacy_account"
    )
    legacy_id = models.CharField(max_length=128, unique=True)
    # The legacy platform's public identifier (Synnefo 0.13 gave every user a uuid).
    uuid = models.UUIDField(null=True, blank=True, unique=True)
    was_active = models.BooleanField(default=True)
    email_verified = models.BooleanField(default=False)
    flagged_duplicate = models.BooleanField(default=False)
    # What the account owned on the legacy services: Cyclades VMs and private networks,
    # Pithos files.
    vms = models.PositiveIntegerField(default=0)
    networks = models.PositiveIntegerField(default=0)
    files = models.PositiveBigIntegerField(default=0)
    imported_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            # The admin's "flagged for dedupe" list.
            models.Index(
                fields=["imported_at"],
                condition=Q(flagged_duplicate=True),
                name="legacy_account_flagged_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.legacy_id


class LegacyRole(models.Model):
    """A role as the legacy platform wrote it, for one membership of an imported account.

    A foreign key to the account, so a merge moves it to the survivor like any other row:
    the survivor keeps every role text its merged accounts had, even one the membership's
    own ``role`` (the strongest known one) does not name.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="legacy_roles")
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="legacy_roles"
    )
    role = models.CharField(max_length=32)
    # The legacy account that had it (a survivor lists what each merged account brought).
    legacy_id = models.CharField(max_length=128)

    def __str__(self) -> str:
        return f"{self.role} in organization {self.organization_id} (from {self.legacy_id})"


class DedupeReview(models.Model):
    """A group of accounts only one of the two rules calls duplicates, waiting for staff.

    The Unicode rule (canonical caseless keys) and the legacy platform's (``UPPER()``)
    disagree on it, so it is never merged without a decision: ``approved`` puts it into the
    next dedupe run, ``kept_apart`` leaves the accounts as they are and the finder stops
    listing that group. ``accounts`` is the sorted id list the decision was about; if the
    group changes (another account joins it), it is a new group to review.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Waiting for a decision"
        APPROVED = "approved", "Merge approved"
        KEPT_APART = "kept_apart", "Kept apart"
        MERGED = "merged", "Merged"

    members = models.CharField(max_length=64, unique=True)  # digest of ``accounts``
    accounts = models.JSONField()
    emails = models.JSONField()
    rule = models.CharField(max_length=16)
    reason = models.CharField(max_length=255)
    state = models.CharField(
        max_length=16, choices=State.choices, default=State.PENDING, db_index=True
    )
    survivor_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    # The deciding account's e-mail, not a foreign key: a merge must not move the decision.
    decided_by = models.CharField(max_length=254, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{', '.join(self.emails)} ({self.reason}; {self.state})"


class DedupeRun(Run):
    """A dedupe job: merge the duplicate groups of ``plan``, or undo a merge run.

    ``plan`` is the list of groups the operator confirmed (e-mail key, survivor, the
    others), so the job does exactly what was shown. ``total`` counts the groups found,
    ``done`` the groups merged (or restored) and ``failed`` the groups that failed;
    ``cursor`` is the next plan position, written in each group's own transaction.
    """

    task_name = "migrations_app.tasks_accounts.dedupe_run_execute"

    class Kind(models.TextChoices):
        MERGE = "merge", "Merge"
        UNDO = "undo", "Undo"

    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.MERGE)
    delete_duplicates = models.BooleanField(default=False)
    prefer = models.JSONField(default=list, blank=True)
    plan = models.JSONField(default=list, blank=True)
    cursor = models.PositiveIntegerField(default=0)
    chunk_size = models.PositiveIntegerField(default=200)
    undo_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="undo_runs"
    )
    undone_at = models.DateTimeField(null=True, blank=True)
    # Undo runs: restore fields even where they changed again since the merge.
    force = models.BooleanField(default=False)
    # Written by the worker between groups; a running run whose heartbeat is older than
    # DEDUPE_RUN_DEAD_SECONDS (or whose process on this host is gone) is dead.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    restored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"dedupe {self.kind} run {self.pk} ({self.state})"

    @property
    def groups_found(self) -> int:
        return self.total

    @property
    def groups_merged(self) -> int:
        return self.done


class DedupeCheckpoint(models.Model):
    """The backup of one group's rows, written before the run's first change.

    ``rows`` is Django's JSON serialization (``manage.py dumpdata`` format) of the group's
    accounts and of every row pointing at them, so ``manage.py dedupe_users --checkpoint
    RUN_ID > backup.json`` followed by ``manage.py loaddata backup.json`` restores them.
    """

    run = models.ForeignKey(DedupeRun, on_delete=models.CASCADE, related_name="checkpoints")
    position = models.PositiveIntegerField()
    rows = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "position"], name="dedupe_checkpoint_uniq"),
        ]

    def __str__(self) -> str:
        return f"checkpoint of group {self.position} of run {self.run_id}"


class DedupeJournal(models.Model):
    """What one group's merge changed, in order, so that undo can restore it exactly.

    ``changes`` holds ``set`` entries (model, field, primary keys, old and new value) and
    ``delete`` entries (the deleted rows, serialized whole).
    """

    class State(models.TextChoices):
        MERGED = "merged", "Merged"
        FAILED = "failed", "Failed"
        UNDONE = "undone", "Undone"

    run = models.ForeignKey(DedupeRun, on_delete=models.CASCADE, related_name="journal")
    position = models.PositiveIntegerField()
    email_key = models.CharField(max_length=254)
    survivor_id = models.BigIntegerField()
    merged_ids = models.JSONField(default=list)
    state = models.CharField(max_length=8, choices=State.choices)
    error = models.TextField(blank=True)
    changes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    undone_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "dedupe journal entries"
        ordering = ["run", "position"]
        constraints = [
            # One entry per group: a redelivered task skips the groups already done.
            models.UniqueConstraint(fields=["run", "position"], name="dedupe_journal_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.email_key} → {self.survivor_id} ({self.state})"


class DedupeMerged(models.Model):
    """An account merged into another: the duplicate finder leaves it out."""

    user_id = models.BigIntegerField(unique=True)
    survivor_id = models.BigIntegerField()
    journal = models.ForeignKey(DedupeJournal, on_delete=models.CASCADE, related_name="+")

    def __str__(self) -> str:
        return f"user {self.user_id} merged into {self.survivor_id}"


class QuotaRun(Run):
    """A quota job: verify stored usage against real usage, sync the differing accounts,
    or reset (recompute) every stored usage. ``result`` holds the differences found."""

    task_name = "migrations_app.tasks_accounts.quota_run_execute"

    class Mode(models.TextChoices):
        VERIFY = "verify", "Verify"
        SYNC = "sync", "Sync"
        RESET = "reset", "Reset usage"

    mode = models.CharField(max_length=8, choices=Mode.choices)
    result = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"quota {self.mode} run {self.pk} ({self.state})"
