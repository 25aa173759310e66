"""Fleet registry: organizations, staff accounts, systems, inventories and the audit log."""

import unicodedata
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import Case, Q, Value, When
from django.db.models.functions import Lower, Upper
from django.utils import timezone


class Organization(models.Model):
    """A node of the commercial tree: owner → distributor → reseller → customer.

    ``path`` is the materialized chain of ancestor ids (``/1/7/42/``) so that "this
    organization and everything below it" is one indexed prefix match.
    """

    class Kind(models.TextChoices):
        OWNER = "owner", "Owner"
        DISTRIBUTOR = "distributor", "Distributor"
        RESELLER = "reseller", "Reseller"
        CUSTOMER = "customer", "Customer"

    # Which kinds may sit directly under which: a customer can be served by a reseller,
    # a distributor or the owner directly, never the other way round.
    ALLOWED_PARENTS = {
        Kind.OWNER: (),
        Kind.DISTRIBUTOR: (Kind.OWNER,),
        Kind.RESELLER: (Kind.OWNER, Kind.DISTRIBUTOR),
        Kind.CUSTOMER: (Kind.OWNER, Kind.DISTRIBUTOR, Kind.RESELLER),
    }

    name = models.CharField(max_length=255)
    # What commands and URLs call the organization: names repeat across tenants, slugs do
    # not (the unique index is what ``organization_resolve`` looks a slug up by).
    slug = models.SlugField(max_length=80, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    # db_index gives PostgreSQL a varchar_pattern_ops index too: scoping is a LIKE 'x%'.
    path = models.CharField(max_length=255, db_index=True, editable=False, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["path"]
        constraints = [
            models.CheckConstraint(
                name="fleet_org_owner_is_root",
                condition=(Q(kind="owner") & Q(parent__isnull=True))
                | (~Q(kind="owner") & Q(parent__isnull=False)),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


def canonical_email_key(email: str) -> str:
    """The e-mail as Unicode canonical caseless matching sees it: NFD(casefold(NFD(x))).

    Two addresses with one key are one address to a person reading them: case (σ/ς/Σ, the
    Kelvin sign and k, ẞ and ss) and composed or decomposed accents make no difference.
    """
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", email).casefold())


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra):
        if not email:
            raise ValueError("An e-mail address is required.")
        # Stored as typed: only the domain is normalized, the local part may be
        # case-sensitive on the legacy side.
        user = self.model(email=self.normalize_email(email), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra):
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra):
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A staff or customer account, logged in by e-mail.

    Roles are Django groups (reader, support, admin); what a role may see is scoped to
    ``organization`` and everything below it.
    """

    email = models.EmailField(max_length=254)
    full_name = models.CharField(max_length=255, blank=True)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="users"
    )
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)
    # canonical_email_key(email), kept by save() and by every bulk writer: the dedupe finds
    # duplicates by it and the constraint below keeps new ones out.
    email_key = models.CharField(max_length=1024, default="", editable=False)
    # An active account that already shared its key with another active one when the key
    # was introduced: the constraint lets it be until a dedupe merges (or keeps apart) it.
    email_key_duplicate_allowed = models.BooleanField(default=False, editable=False)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            # Legacy platforms had case-sensitive e-mails: colliding accounts may be
            # imported inactive and deduped later, but two active ones never coexist.
            models.UniqueConstraint(
                Lower("email"),
                condition=Q(is_active=True),
                name="fleet_user_email_ci_unique_active",
                violation_error_message="An active account with this e-mail already exists.",
            ),
            # One active account per canonical key (accounts grandfathered in by the
            # migration that added the key excepted, until a dedupe decides them).
            models.UniqueConstraint(
                fields=["email_key"],
                condition=Q(is_active=True, email_key_duplicate_allowed=False),
                name="fleet_user_email_key_unique_active",
                violation_error_message="An active account with this e-mail already exists.",
            ),
        ]
        indexes = [
            # Login and dedupe look accounts up by lower(email), active or not.
            models.Index(Lower("email"), name="fleet_user_email_lower_idx"),
            # The dedupe's GROUP BY email_key and the import's collision look-ups.
            models.Index(fields=["email_key"], name="fleet_user_email_key_idx"),
            # Sign-in (email__iexact is UPPER(email) = UPPER(%s)) and the legacy rule's
            # look-ups of the import.
            models.Index(Upper("email"), name="fleet_user_email_upper_idx"),
        ]

    def __str__(self) -> str:
        return self.email

    def save(self, *args, **kwargs) -> None:
        # A derived column: whoever saves the e-mail saves its key, or the key drifts.
        self.email_key = canonical_email_key(self.email or "")
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "email" in update_fields:
            kwargs["update_fields"] = {*update_fields, "email_key"}
        super().save(*args, **kwargs)


class SystemQuerySet(models.QuerySet):
    def with_status(self) -> "SystemQuerySet":
        """Annotate ``status_value`` the same way ``System.status`` computes it."""
        cutoff = timezone.now() - System.heartbeat_timeout()
        return self.annotate(
            status_value=Case(
                When(last_heartbeat_at__isnull=True, then=Value(System.Status.UNKNOWN)),
                When(last_heartbeat_at__gte=cutoff, then=Value(System.Status.ACTIVE)),
                default=Value(System.Status.INACTIVE),
                output_field=models.CharField(),
            )
        )

    def with_status_filter(self, status: str) -> "SystemQuerySet":
        cutoff = timezone.now() - System.heartbeat_timeout()
        if status == System.Status.UNKNOWN:
            return self.filter(last_heartbeat_at__isnull=True)
        if status == System.Status.ACTIVE:
            return self.filter(last_heartbeat_at__gte=cutoff)
        if status == System.Status.INACTIVE:
            return self.filter(last_heartbeat_at__lt=cutoff)
        return self.none()

    def not_deleted(self) -> "SystemQuerySet":
        return self.filter(deleted_at__isnull=True)


class System(models.Model):
    """A managed system (an ns8 cluster, a firewall, a storage host).

    Staff create it and receive its secret once; the system registers with that secret
    and then calls the collect API with ``system_key:system_secret``. Status is derived
    from the heartbeat age at read time, so there is nothing to flap or to keep in step.
    """

    class Status(models.TextChoices):
        UNKNOWN = "unknown", "Unknown"
        ACTIVE = "active", "Active"
        INACTIVE = "inactive", "Inactive"

    # Every index here is written by every heartbeat (the index on last_heartbeat_at keeps
    # the update from being HOT), so there are no redundant ones: organization_id lookups
    # use (organization, name), and the unique keys are constraints, which Django does not
    # twin with the varchar_pattern_ops indexes that unique=True and db_index=True add on
    # PostgreSQL for LIKE queries nobody makes.
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="systems", db_index=False
    )
    name = models.CharField(max_length=255)
    # The name the cluster gives itself (its inventory's ui_name), shown beside ``name``,
    # which is staff's and which no inventory overwrites.
    ui_name = models.CharField(
        "name on the cluster",
        max_length=255,
        blank=True,
        default="",
        # Rows written in SQL (bulk loads, benchmarks) need not name it.
        db_default="",
        editable=False,
    )
    type = models.CharField(max_length=64, blank=True)
    fqdn = models.CharField(max_length=255, blank=True)
    ipv4_address = models.GenericIPAddressField(protocol="IPv4", null=True, blank=True)
    ipv6_address = models.GenericIPAddressField(protocol="IPv6", null=True, blank=True)
    version = models.CharField(max_length=64, blank=True)
    system_key = models.CharField(max_length=64, editable=False)
    # Lookup part of the secret (my_<public>.<secret>): register finds the system by it.
    secret_public = models.CharField(max_length=32, editable=False)
    secret_digest = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    registered_at = models.DateTimeField(null=True, blank=True)
    # First successful call with the current secret; cleared whenever a secret is issued,
    # so "credentials issued, never used" is a plain IS NULL.
    secret_confirmed_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_inventory_at = models.DateTimeField(null=True, blank=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = SystemQuerySet.as_manager()

    class Meta:
        # No index on last_heartbeat_at: every heartbeat writes that column, and an index
        # on it made each of them a non-HOT update, one entry in every index of the table
        # (migration 0012). The status counts scan the systems in any case; the silent
        # list sorts those it finds.
        indexes = [
            # "Never sent an inventory" lists, newest systems first.
            models.Index(
                fields=["-created_at"],
                condition=Q(last_inventory_at__isnull=True),
                name="fleet_sys_no_inventory_idx",
            ),
            models.Index(fields=["organization", "name"], name="fleet_sys_org_name_idx"),
            models.Index(fields=["type"], name="fleet_sys_type_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["system_key"], name="fleet_sys_key_uniq"),
            models.UniqueConstraint(fields=["secret_public"], name="fleet_sys_secret_public_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.system_key})"

    @staticmethod
    def heartbeat_timeout() -> timedelta:
        return timedelta(minutes=settings.FLEET_HEARTBEAT_TIMEOUT_MINUTES)

    @property
    def status(self) -> str:
        if self.last_heartbeat_at is None:
            return self.Status.UNKNOWN
        if timezone.now() - self.last_heartbeat_at <= self.heartbeat_timeout():
            return self.Status.ACTIVE
        return self.Status.INACTIVE


class PendingSecret(models.Model):
    """A secret issued to a system by a rotation and not used yet, kept as its digest only.

    A legacy client may ask for its native credentials several times at once (ns8 starts
    its scripts together) and keep any of the answers. While the system has not used a
    secret, each one issued since it last confirmed one authenticates, within
    ``ROTATION_PENDING_SECRETS`` (the newest ones) and ``ROTATION_GRACE_MINUTES`` of being
    issued; the first one used becomes the system's secret and the others are deleted in
    the same transaction. A confirmed system has no rows here, so its calls never read
    this table.
    """

    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="pending_secrets")
    digest = models.CharField(max_length=64, editable=False)
    issued_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["system", "-issued_at"], name="fleet_pending_sys_idx"),
        ]

    def __str__(self) -> str:
        return f"pending secret of system {self.system_id} issued {self.issued_at:%Y-%m-%d %H:%M}"


class SystemActivityDay(models.Model):
    """One row per system per UTC day it sent a heartbeat: the fleet's 30-day chart.

    Written once a day per system (the first heartbeat of the day), so the chart is a
    count per day over a small table instead of a scan of every heartbeat.
    """

    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "system"], name="fleet_activity_day_uniq"),
        ]

    def __str__(self) -> str:
        return f"system {self.system_id} seen on {self.day}"


class Inventory(models.Model):
    """One inventory as the system sent it (the ns8 phonehome JSON), kept as history."""

    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="inventories")
    received_at = models.DateTimeField(default=timezone.now)
    data = models.JSONField()
    size = models.PositiveIntegerField()
    # Digest of the facts that count (inventory_diff.facts_digest); blank on rows stored
    # before it existed, which simply compare as changed once.
    facts_digest = models.CharField(max_length=64, blank=True, editable=False)
    # SHA-256 of the body as it came (the inbox row's digest): the next document with the
    # same digest is the same document, recorded without being flattened or diffed.
    body_digest = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "inventories"
        indexes = [
            # The previous inventory of a system, and a system's history newest first.
            models.Index(fields=["system", "-received_at"], name="fleet_inv_sys_recv_idx"),
        ]

    def __str__(self) -> str:
        return f"inventory {self.pk} of system {self.system_id}"


class InventoryInbox(models.Model):
    """An inventory accepted by the collect API and not processed yet: the body exactly as
    it came, with its SHA-256.

    The request stores this row and answers 202; workers drain the inbox in batches
    (``services.inventory_inbox_drain``) and delete each row in the transaction that
    records its inventory, so a row is processed once or, if its worker dies, not at all
    and again later. A document that fails while being processed is kept here, stamped
    ``failed_at`` with the reason, and never blocks the rows behind it.
    """

    # Primary-key order is arrival order: the drain takes rows in it.
    id = models.BigAutoField(primary_key=True)
    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="+")
    received_at = models.DateTimeField(default=timezone.now)
    body = models.BinaryField()
    size = models.PositiveIntegerField()
    digest = models.CharField(max_length=64)
    failed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        verbose_name = "inventory inbox row"
        verbose_name_plural = "inventory inbox"
        indexes = [
            # The drain's ordering check: a system's earlier pending rows held by another
            # worker (system_id = ANY(…) AND id < …).
            models.Index(
                fields=["system", "id"],
                name="fleet_inbox_sys_pending_idx",
                condition=models.Q(failed_at__isnull=True),
            ),
            # The failed rows the admin lists.
            models.Index(
                fields=["failed_at"],
                name="fleet_inbox_failed_idx",
                condition=models.Q(failed_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"inbox row {self.pk} of system {self.system_id}"


class InventoryChange(models.Model):
    """One field that differs between an inventory and the previous one."""

    class Severity(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        CRITICAL = "critical", "Critical"

    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="changes")
    inventory = models.ForeignKey(Inventory, on_delete=models.CASCADE, related_name="changes")
    detected_at = models.DateTimeField(default=timezone.now)
    path = models.CharField(max_length=512)
    old = models.JSONField(null=True, blank=True)
    new = models.JSONField(null=True, blank=True)
    severity = models.CharField(max_length=8, choices=Severity.choices)

    class Meta:
        indexes = [
            models.Index(fields=["system", "-detected_at"], name="fleet_chg_sys_det_idx"),
            models.Index(fields=["severity", "-detected_at"], name="fleet_chg_sev_det_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.path}: {self.old!r} → {self.new!r}"


class AuditEntry(models.Model):
    """Who changed what, when, with the state before and after (secrets masked).

    Written by ``fleet_app.services.audit_record`` in the same transaction as the change.
    """

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_entries",
    )
    # Kept as text so the entry still says who it was after the account is gone.
    actor_repr = models.CharField(max_length=254, blank=True)
    action = models.CharField(max_length=64)
    content_type = models.ForeignKey(
        ContentType, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=255, blank=True)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "audit entries"
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["content_type", "object_id"], name="fleet_audit_object_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_repr} {self.action} {self.object_repr}"


# --- Accounts: memberships and quotas -----------------------------------------------------


class Membership(models.Model):
    """A user's membership of an organization, with the legacy platform's role text.

    ``User.organization`` is the one organization that scopes a staff account; a legacy
    customer account may belong to several organizations, which is what this records.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=32, default="member")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # One row per pair; its index also serves "the memberships of a user".
            models.UniqueConstraint(fields=["user", "organization"], name="fleet_membership_uniq"),
        ]

    def __str__(self) -> str:
        return f"user {self.user_id} in organization {self.organization_id} ({self.role})"


class Quota(models.Model):
    """A resource limit and the stored usage of one organization or one user.

    ``limit`` is NULL when the account has the default (``FLEET_QUOTA_DEFAULTS``), so a
    change of the default reaches every such account; only non-default limits are stored.
    ``usage`` is the stored (bookkept) usage, which ``manage.py quotas --verify`` compares
    with the real usage computed from the data.
    """

    class Resource(models.TextChoices):
        SYSTEMS = "systems", "Systems"
        BACKUP_BYTES = "backup_bytes", "Backup storage (bytes)"
        # The legacy platform's six (Synnefo 0.13's ASTAKOS_SERVICES), under its names.
        CYCLADES_VM = "cyclades.vm", "Virtual machines"
        CYCLADES_CPU = "cyclades.cpu", "Virtual machine processors"
        CYCLADES_RAM = "cyclades.ram", "Virtual machine memory (bytes)"
        CYCLADES_DISK = "cyclades.disk", "Virtual machine disk (bytes)"
        CYCLADES_NETWORK_PRIVATE = "cyclades.network.private", "Private networks"
        PITHOS_DISKSPACE = "pithos+.diskspace", "File storage (bytes)"

    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="quotas"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="quotas",
    )
    resource = models.CharField(max_length=32, choices=Resource.choices)
    limit = models.BigIntegerField(null=True, blank=True)
    usage = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                name="fleet_quota_one_holder",
                condition=(Q(organization__isnull=False) & Q(user__isnull=True))
                | (Q(organization__isnull=True) & Q(user__isnull=False)),
                violation_error_message="A quota belongs to an organization or to a user.",
            ),
            # One row per holder and resource; the indexes also serve the holder lookups.
            models.UniqueConstraint(
                fields=["organization", "resource"],
                condition=Q(organization__isnull=False),
                name="fleet_quota_org_resource_uniq",
            ),
            models.UniqueConstraint(
                fields=["user", "resource"],
                condition=Q(user__isnull=False),
                name="fleet_quota_user_resource_uniq",
            ),
        ]

    def __str__(self) -> str:
        holder = (
            f"organization {self.organization_id}"
            if self.organization_id
            else f"user {self.user_id}"
        )
        return f"{self.resource} quota of {holder}"

    @property
    def effective_limit(self) -> int:
        """The stored limit, or the default from settings when none is stored."""
        if self.limit is not None:
            return self.limit
        return settings.FLEET_QUOTA_DEFAULTS[self.resource]
