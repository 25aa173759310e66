"""Each kind of row a bundle carries: which rows a selection reaches, how a row is written
out (natural keys, never database ids), how the target's rows are read back in the same
shape, and how rows are written on the target in bulk.

A row is a flat JSON object with ``key``, its natural key. Its digest is the sha256 of
its canonical JSON without the ``volatile`` fields (heartbeat times move on both sides and
are no reason to call a row changed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model, QuerySet
from django.db.models.functions import Lower
from django.utils.dateparse import parse_datetime

from fleet_app.models import AuditEntry, Inventory, Membership, Organization, Quota, System, User

BATCH = 1000


def stamp(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def unstamp(value: str | None) -> dt.datetime | None:
    return parse_datetime(value) if value else None


def row_digest(row: dict[str, Any], volatile: Iterable[str] = ()) -> str:
    kept = {k: v for k, v in row.items() if k not in volatile}
    data = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:32]


@dataclass
class Scope:
    """What an export reaches."""

    organization_ids: list[int]
    credentials: bool = False
    inventories: str = "latest"


@dataclass
class Target:
    """What an import knows while it writes: names mapped, ids found, options."""

    org_map: dict[str, str] = field(default_factory=dict)
    credentials: bool = False
    fresh_secrets: bool = False
    orgs: dict[str, int] = field(default_factory=dict)
    systems: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    needs_secrets: list[str] = field(default_factory=list)
    blobs: list[dict[str, Any]] = field(default_factory=list)

    def org(self, slug: str | None) -> str | None:
        return self.org_map.get(slug, slug) if slug else slug

    def org_id(self, slug: str | None) -> int | None:
        if not slug:
            return None
        if slug not in self.orgs:
            found = Organization.objects.filter(slug=slug).values_list("id", flat=True).first()
            if found is None:
                raise LookupError(f"organization {slug!r} is not on the target.")
            self.orgs[slug] = found
        return self.orgs[slug]

    def system_id(self, key: str) -> int:
        if key not in self.systems:
            found = System.objects.filter(system_key=key).values_list("id", flat=True).first()
            if found is None:
                raise LookupError(f"system {key} is not on the target.")
            self.systems[key] = found
        return self.systems[key]

    def user_id(self, email: str) -> int | None:
        if email not in self.users:
            self.users[email] = (
                User.objects.annotate(low=Lower("email"))
                .filter(low=email)
                .order_by("-is_active", "id")
                .values_list("id", flat=True)
                .first()
            )
        return self.users[email]


def _chunks(items: list, size: int = BATCH) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Kind:
    name = ""
    volatile: tuple[str, ...] = ()
    # Kinds written only once (history): a changed row is never updated, none deleted.
    append_only = False
    credential_fields: tuple[str, ...] = ()

    def source(self, scope: Scope) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def map_row(self, row: dict[str, Any], target: Target) -> dict[str, Any]:
        return row

    def existing(
        self, keys: list[str], target: Target, rows: list[dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """The target's rows with these keys, in the bundle's shape."""
        raise NotImplementedError

    def write(self, creates: list[dict], updates: list[dict], target: Target) -> None:
        raise NotImplementedError

    def delete(self, keys: list[str], target: Target) -> int:
        return 0

    def digest(self, row: dict[str, Any]) -> str:
        return row_digest(row, self.volatile)

    def strip(self, row: dict[str, Any], credentials: bool) -> dict[str, Any]:
        if credentials:
            return row
        return {k: v for k, v in row.items() if k not in self.credential_fields}


def _values(queryset: QuerySet, *fields: str) -> Iterator[dict[str, Any]]:
    return queryset.values(*fields).iterator(chunk_size=2000)


# --- Organizations ---------------------------------------------------------------------------


class Organizations(Kind):
    name = "organizations"

    def source(self, scope):
        rows = Organization.objects.filter(id__in=scope.organization_ids).order_by("path")
        for r in _values(rows, "slug", "name", "kind", "parent__slug", "created_at"):
            yield {
                "key": r["slug"],
                "name": r["name"],
                "kind": r["kind"],
                "parent": r["parent__slug"],
                "created_at": stamp(r["created_at"]),
            }

    def map_row(self, row, target):
        return {**row, "key": target.org(row["key"]), "parent": target.org(row["parent"])}

    def existing(self, keys, target, rows):
        found = {}
        rows = Organization.objects.filter(slug__in=keys)
        for r in _values(rows, "slug", "name", "kind", "parent__slug", "created_at"):
            found[r["slug"]] = {
                "key": r["slug"],
                "name": r["name"],
                "kind": r["kind"],
                "parent": r["parent__slug"],
                "created_at": stamp(r["created_at"]),
            }
        return found

    def write(self, creates, updates, target):
        # Parents first: the section is in path order. An organization's path needs its id.
        for row in creates:
            org = Organization.objects.create(
                name=row["name"],
                slug=row["key"],
                kind=row["kind"],
                parent_id=target.org_id(row["parent"]),
                created_at=unstamp(row["created_at"]),
            )
            parent_path = (
                Organization.objects.values_list("path", flat=True).get(pk=org.parent_id)
                if org.parent_id
                else "/"
            )
            Organization.objects.filter(pk=org.pk).update(path=f"{parent_path}{org.pk}/")
            target.orgs[org.slug] = org.pk
        for row in updates:
            Organization.objects.filter(slug=row["key"]).update(name=row["name"], kind=row["kind"])

    def delete(self, keys, target):
        gone = 0
        for slug in keys:
            org = Organization.objects.filter(slug=slug).first()
            if org is None or org.children.exists() or org.systems.exists() or org.users.exists():
                continue
            org.delete()
            gone += 1
        return gone


# --- Users, with their roles and memberships ------------------------------------------------


class Users(Kind):
    name = "users"
    credential_fields = ("password",)

    def _row(self, user: User, orgs: dict[int, str], groups: list[str], members) -> dict:
        return {
            "key": user.email.lower(),
            "email": user.email,
            "full_name": user.full_name,
            "organization": orgs.get(user.organization_id) if user.organization_id else None,
            "is_staff": user.is_staff,
            "is_active": user.is_active,
            "date_joined": stamp(user.date_joined),
            "groups": sorted(groups),
            "memberships": sorted(members),
            "password": user.password,
        }

    def _rows(self, users: QuerySet[User], org_ids: list[int] | None) -> Iterator[dict]:
        for batch in _batched(users.order_by("id").iterator(chunk_size=2000)):
            ids = [u.pk for u in batch]
            groups: dict[int, list[str]] = {}
            for uid, gname in User.groups.through.objects.filter(user_id__in=ids).values_list(
                "user_id", "group__name"
            ):
                groups.setdefault(uid, []).append(gname)
            members: dict[int, list] = {}
            memberships = Membership.objects.filter(user_id__in=ids)
            if org_ids is not None:
                memberships = memberships.filter(organization_id__in=org_ids)
            for uid, slug, role in memberships.values_list("user_id", "organization__slug", "role"):
                members.setdefault(uid, []).append([slug, role])
            orgs = dict(
                Organization.objects.filter(
                    id__in={u.organization_id for u in batch if u.organization_id}
                ).values_list("id", "slug")
            )
            for user in batch:
                yield self._row(user, orgs, groups.get(user.pk, []), members.get(user.pk, []))

    def source(self, scope):
        users = User.objects.filter(organization_id__in=scope.organization_ids, is_superuser=False)
        for row in self._rows(users, scope.organization_ids):
            yield self.strip(row, scope.credentials)

    def map_row(self, row, target):
        return {
            **row,
            "organization": target.org(row["organization"]),
            "memberships": sorted([target.org(s), r] for s, r in row["memberships"]),
        }

    def existing(self, keys, target, rows):
        users = (
            User.objects.annotate(low=Lower("email"))
            .filter(low__in=keys)
            .order_by("is_active", "id")  # the active one wins below
        )
        found = {}
        for row in self._rows(users, None):
            found[row["key"]] = self.strip(row, target.credentials)
        return found

    def write(self, creates, updates, target):
        group_ids = dict(Group.objects.values_list("name", "id"))
        made = User.objects.bulk_create(
            [
                User(
                    email=row["email"],
                    full_name=row["full_name"],
                    organization_id=target.org_id(row["organization"]),
                    is_staff=row["is_staff"],
                    is_active=row["is_active"],
                    date_joined=unstamp(row["date_joined"]),
                    # No hash travelled: an account that must set its password anew.
                    password=row.get("password") or f"!{secrets.token_urlsafe(30)}",
                )
                for row in creates
            ]
        )
        for user in made:
            target.users[user.email.lower()] = user.pk
        for row in updates:
            fields = {
                "email": row["email"],
                "full_name": row["full_name"],
                "organization_id": target.org_id(row["organization"]),
                "is_staff": row["is_staff"],
                "is_active": row["is_active"],
            }
            if row.get("password"):
                fields["password"] = row["password"]
            uid = target.user_id(row["key"])
            User.objects.filter(pk=uid).update(**fields)
        rows = creates + updates
        ids = [target.user_id(row["key"]) for row in rows]
        through = User.groups.through
        if updates:
            through.objects.filter(user_id__in=ids).delete()
            Membership.objects.filter(user_id__in=ids).delete()
        through.objects.bulk_create(
            [
                through(user_id=uid, group_id=group_ids[name])
                for uid, row in zip(ids, rows, strict=True)
                for name in row["groups"]
                if name in group_ids
            ]
        )
        Membership.objects.bulk_create(
            [
                Membership(user_id=uid, organization_id=target.org_id(slug), role=role)
                for uid, row in zip(ids, rows, strict=True)
                for slug, role in row["memberships"]
            ],
            ignore_conflicts=True,
        )

    def delete(self, keys, target):
        return User.objects.annotate(low=Lower("email")).filter(low__in=keys).update(is_active=False)


def _batched(items: Iterable, size: int = BATCH) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- Systems, with their credential digests --------------------------------------------------

SYSTEM_FIELDS = (
    "name",
    "type",
    "fqdn",
    "ipv4_address",
    "ipv6_address",
    "version",
)
SYSTEM_STAMPS = (
    "created_at",
    "registered_at",
    "secret_confirmed_at",
    "suspended_at",
    "deleted_at",
    "last_heartbeat_at",
    "last_inventory_at",
)


class Systems(Kind):
    name = "systems"
    volatile = ("last_heartbeat_at", "last_inventory_at")
    credential_fields = ("secret_public", "secret_digest")

    def _rows(self, queryset):
        fields = ("system_key", "organization__slug", *SYSTEM_FIELDS, *SYSTEM_STAMPS)
        for r in _values(queryset, *fields, "secret_public", "secret_digest"):
            row = {"key": r["system_key"], "organization": r["organization__slug"]}
            row.update({f: r[f] for f in SYSTEM_FIELDS})
            row.update({f: stamp(r[f]) for f in SYSTEM_STAMPS})
            row["secret_public"] = r["secret_public"]
            row["secret_digest"] = r["secret_digest"]
            yield row

    def source(self, scope):
        rows = System.objects.filter(organization_id__in=scope.organization_ids).order_by("id")
        for row in self._rows(rows):
            yield self.strip(row, scope.credentials)

    def map_row(self, row, target):
        return {**row, "organization": target.org(row["organization"])}

    def existing(self, keys, target, rows):
        found = {}
        for row in self._rows(System.objects.filter(system_key__in=keys)):
            found[row["key"]] = self.strip(row, target.credentials and not target.fresh_secrets)
        return found

    def _fields(self, row, target) -> dict[str, Any]:
        fields: dict[str, Any] = {f: row[f] for f in SYSTEM_FIELDS}
        fields.update({f: unstamp(row[f]) for f in SYSTEM_STAMPS})
        fields["organization_id"] = target.org_id(row["organization"])
        return fields

    def write(self, creates, updates, target):
        made = []
        for row in creates:
            fields = self._fields(row, target)
            if row.get("secret_digest") and not target.fresh_secrets:
                fields["secret_public"] = row["secret_public"]
                fields["secret_digest"] = row["secret_digest"]
            else:
                # No digest that can match here: a public part of its own, no digest; the
                # system needs fresh secrets from this instance before it can call in.
                fields["secret_public"] = secrets.token_hex(10)
                fields["secret_digest"] = ""
                fields["secret_confirmed_at"] = None
                target.needs_secrets.append(row["key"])
            made.append(System(system_key=row["key"], **fields))
        for system in System.objects.bulk_create(made):
            target.systems[system.system_key] = system.pk
        if not updates:
            return
        existing = {s.system_key: s for s in System.objects.filter(system_key__in=[r["key"] for r in updates])}
        changed = []
        names = [*SYSTEM_FIELDS, *SYSTEM_STAMPS, "organization_id"]
        for row in updates:
            system = existing[row["key"]]
            fields = self._fields(row, target)
            for volatile in self.volatile:
                # Whichever side heard from the system last is right.
                ours = getattr(system, volatile)
                theirs = fields[volatile]
                fields[volatile] = max(filter(None, (ours, theirs)), default=None)
            for name, value in fields.items():
                setattr(system, name, value)
            if row.get("secret_digest") and not target.fresh_secrets:
                system.secret_public = row["secret_public"]
                system.secret_digest = row["secret_digest"]
            changed.append(system)
        System.objects.bulk_update(changed, [*names, "secret_public", "secret_digest"], batch_size=BATCH)

    def delete(self, keys, target):
        from django.utils import timezone

        return System.objects.filter(system_key__in=keys, deleted_at__isnull=True).update(
            deleted_at=timezone.now()
        )


# --- Legacy mappings and fingerprint anomalies ----------------------------------------------

MAPPING_STAMPS = (
    "created_at",
    "legacy_last_seen_at",
    "last_attempt_at",
    "rotated_at",
    "confirmed_at",
    "fingerprint_at",
    "migrated_at",
    "released_at",
    "reopened_at",
)


def _model(label: str) -> type[Model]:
    # The cutover's models are reached by label: bundles carry every capability's rows
    # without importing the capabilities.
    return apps.get_model(label)


class Mappings(Kind):
    name = "mappings"
    volatile = ("last_attempt_at",)
    credential_fields = ("legacy_token_digest",)

    def _rows(self, queryset):
        fields = ("legacy_system_id", "system__system_key", "rotation_count", "legacy_token_digest")
        for r in _values(queryset, *fields, *MAPPING_STAMPS):
            row = {
                "key": r["legacy_system_id"],
                "system": r["system__system_key"],
                "rotation_count": r["rotation_count"],
                "legacy_token_digest": r["legacy_token_digest"],
            }
            row.update({f: stamp(r[f]) for f in MAPPING_STAMPS})
            yield row

    def source(self, scope):
        model = _model("migrations_app.LegacyMapping")
        rows = model._default_manager.filter(
            system__organization_id__in=scope.organization_ids
        ).order_by("id")
        for row in self._rows(rows):
            yield self.strip(row, scope.credentials)

    def existing(self, keys, target, rows):
        model = _model("migrations_app.LegacyMapping")
        rows = model._default_manager.filter(legacy_system_id__in=keys)
        return {
            row["key"]: self.strip(row, target.credentials and not target.fresh_secrets)
            for row in self._rows(rows)
        }

    def write(self, creates, updates, target):
        model = _model("migrations_app.LegacyMapping")
        manager = model._default_manager

        def fields(row):
            data = {f: unstamp(row[f]) for f in MAPPING_STAMPS}
            data["rotation_count"] = row["rotation_count"]
            data["system_id"] = target.system_id(row["system"])
            if row.get("legacy_token_digest") and not target.fresh_secrets:
                data["legacy_token_digest"] = row["legacy_token_digest"]
            return data

        manager.bulk_create(
            [
                model(legacy_system_id=row["key"], **{"legacy_token_digest": "", **fields(row)})
                for row in creates
            ]
        )
        for row in updates:
            manager.filter(legacy_system_id=row["key"]).update(**fields(row))

    def delete(self, keys, target):
        model = _model("migrations_app.LegacyMapping")
        return model._default_manager.filter(legacy_system_id__in=keys).delete()[0]


class Anomalies(Kind):
    name = "anomalies"

    def _rows(self, queryset):
        fields = (
            "system__system_key",
            "kind",
            "claimed_legacy_system_id",
            "expected_legacy_system_id",
            "first_seen_at",
            "last_seen_at",
            "occurrences",
            "resolved_at",
        )
        for r in _values(queryset, *fields):
            key = f"{r['system__system_key']}|{r['claimed_legacy_system_id']}|{stamp(r['first_seen_at'])}"
            yield {
                "key": key,
                "system": r["system__system_key"],
                "kind": r["kind"],
                "claimed": r["claimed_legacy_system_id"],
                "expected": r["expected_legacy_system_id"],
                "first_seen_at": stamp(r["first_seen_at"]),
                "last_seen_at": stamp(r["last_seen_at"]),
                "occurrences": r["occurrences"],
                "resolved_at": stamp(r["resolved_at"]),
            }

    def _manager(self):
        return _model("migrations_app.FingerprintAnomaly")._default_manager

    def source(self, scope):
        yield from self._rows(
            self._manager().filter(system__organization_id__in=scope.organization_ids).order_by("id")
        )

    def existing(self, keys, target, rows):
        systems = {key.split("|", 1)[0] for key in keys}
        rows = self._manager().filter(system__system_key__in=systems)
        return {row["key"]: row for row in self._rows(rows) if row["key"] in set(keys)}

    def _fields(self, row, target):
        return {
            "system_id": target.system_id(row["system"]),
            "kind": row["kind"],
            "claimed_legacy_system_id": row["claimed"],
            "expected_legacy_system_id": row["expected"],
            "first_seen_at": unstamp(row["first_seen_at"]),
            "last_seen_at": unstamp(row["last_seen_at"]),
            "occurrences": row["occurrences"],
            "resolved_at": unstamp(row["resolved_at"]),
        }

    def write(self, creates, updates, target):
        model = _model("migrations_app.FingerprintAnomaly")
        self._manager().bulk_create([model(**self._fields(row, target)) for row in creates])
        for row in updates:
            self._manager().filter(
                system_id=target.system_id(row["system"]),
                claimed_legacy_system_id=row["claimed"],
                first_seen_at=unstamp(row["first_seen_at"]),
            ).update(**self._fields(row, target))


# --- Inventories -----------------------------------------------------------------------------


class Inventories(Kind):
    name = "inventories"
    append_only = True

    def _rows(self, queryset):
        fields = ("system__system_key", "received_at", "data", "size", "facts_digest")
        for r in _values(queryset, *fields):
            yield {
                "key": f"{r['system__system_key']}|{stamp(r['received_at'])}",
                "system": r["system__system_key"],
                "received_at": stamp(r["received_at"]),
                "data": r["data"],
                "size": r["size"],
                "facts_digest": r["facts_digest"],
            }

    def source(self, scope):
        rows = Inventory.objects.filter(system__organization_id__in=scope.organization_ids)
        if scope.inventories != "full":
            # The newest of each system (DISTINCT ON walks fleet_inv_sys_recv_idx).
            rows = rows.order_by("system_id", "-received_at").distinct("system_id")
        else:
            rows = rows.order_by("id")
        yield from self._rows(rows)

    def existing(self, keys, target, rows):
        systems = {key.split("|", 1)[0] for key in keys}
        wanted = set(keys)
        stamps = {unstamp(key.split("|", 1)[1]) for key in keys}
        rows = Inventory.objects.filter(system__system_key__in=systems, received_at__in=stamps)
        return {row["key"]: row for row in self._rows(rows) if row["key"] in wanted}

    def write(self, creates, updates, target):
        Inventory.objects.bulk_create(
            [
                Inventory(
                    system_id=target.system_id(row["system"]),
                    received_at=unstamp(row["received_at"]),
                    data=row["data"],
                    size=row["size"],
                    facts_digest=row["facts_digest"],
                )
                for row in creates
            ]
        )

    def delete(self, keys, target):
        gone = 0
        for key in keys:
            system_key, received = key.split("|", 1)
            gone += Inventory.objects.filter(
                system__system_key=system_key, received_at=unstamp(received)
            ).delete()[0]
        return gone


# --- Cluster backups (rows here, blobs by sha256 beside) ------------------------------------


class ClusterBackups(Kind):
    name = "cluster_backups"

    def _manager(self):
        return _model("backups_app.ClusterBackup")._default_manager

    def _rows(self, queryset):
        fields = (
            "id",
            "system__system_key",
            "organization__slug",
            "filename",
            "mimetype",
            "size",
            "sha256",
            "storage_key",
            "uploaded_at",
        )
        for r in _values(queryset.filter(corrupt_at__isnull=True), *fields):
            yield {
                "key": str(r["id"]),
                "system": r["system__system_key"],
                "organization": r["organization__slug"],
                "filename": r["filename"],
                "mimetype": r["mimetype"],
                "size": r["size"],
                "sha256": r["sha256"],
                "storage_key": r["storage_key"],
                "uploaded_at": stamp(r["uploaded_at"]),
            }

    def source(self, scope):
        yield from self._rows(
            self._manager().filter(organization_id__in=scope.organization_ids).order_by("uploaded_at")
        )

    def map_row(self, row, target):
        return {**row, "organization": target.org(row["organization"])}

    def existing(self, keys, target, rows):
        ids = [uuid.UUID(key) for key in keys]
        return {row["key"]: row for row in self._rows(self._manager().filter(id__in=ids))}

    def write(self, creates, updates, target):
        model = _model("backups_app.ClusterBackup")
        self._manager().bulk_create(
            [
                model(
                    id=uuid.UUID(row["key"]),
                    system_id=target.system_id(row["system"]),
                    organization_id=target.org_id(row["organization"]),
                    filename=row["filename"],
                    mimetype=row["mimetype"],
                    size=row["size"],
                    sha256=row["sha256"],
                    storage_key=row["storage_key"],
                    uploaded_at=unstamp(row["uploaded_at"]),
                )
                for row in creates
            ]
        )
        for row in updates:
            self._manager().filter(id=uuid.UUID(row["key"])).update(
                filename=row["filename"], mimetype=row["mimetype"]
            )

    def delete(self, keys, target):
        # The rows go; their objects become orphans the storage sweep removes.
        return self._manager().filter(id__in=[uuid.UUID(k) for k in keys]).delete()[0]


# --- Quotas ----------------------------------------------------------------------------------


class Quotas(Kind):
    name = "quotas"
    volatile = ("updated_at",)

    def _rows(self, queryset):
        fields = ("organization__slug", "user__email", "resource", "limit", "usage", "updated_at")
        for r in _values(queryset, *fields):
            holder = f"org:{r['organization__slug']}" if r["organization__slug"] else f"user:{(r['user__email'] or '').lower()}"
            yield {
                "key": f"{holder}:{r['resource']}",
                "organization": r["organization__slug"],
                "user": (r["user__email"] or "").lower() or None,
                "resource": r["resource"],
                "limit": r["limit"],
                "usage": r["usage"],
                "updated_at": stamp(r["updated_at"]),
            }

    def source(self, scope):
        from django.db.models import Q

        rows = Quota.objects.filter(
            Q(organization_id__in=scope.organization_ids)
            | Q(user__organization_id__in=scope.organization_ids, user__is_superuser=False)
        ).order_by("id")
        yield from self._rows(rows)

    def map_row(self, row, target):
        org = target.org(row["organization"])
        holder = f"org:{org}" if org else f"user:{row['user']}"
        return {**row, "organization": org, "key": f"{holder}:{row['resource']}"}

    def existing(self, keys, target, rows):
        from django.db.models import Q

        orgs = [k.split(":")[1] for k in keys if k.startswith("org:")]
        users = [k.split(":")[1] for k in keys if k.startswith("user:")]
        rows = Quota.objects.filter(Q(organization__slug__in=orgs) | Q(user__email__in=users))
        wanted = set(keys)
        return {row["key"]: row for row in self._rows(rows) if row["key"] in wanted}

    def _holder(self, row, target) -> dict[str, Any]:
        if row["organization"]:
            return {"organization_id": target.org_id(row["organization"]), "user_id": None}
        return {"organization_id": None, "user_id": target.user_id(row["user"])}

    def write(self, creates, updates, target):
        Quota.objects.bulk_create(
            [
                Quota(
                    **self._holder(row, target),
                    resource=row["resource"],
                    limit=row["limit"],
                    usage=row["usage"],
                    updated_at=unstamp(row["updated_at"]),
                )
                for row in creates
            ]
        )
        for row in updates:
            Quota.objects.filter(**self._holder(row, target), resource=row["resource"]).update(
                limit=row["limit"], usage=row["usage"], updated_at=unstamp(row["updated_at"])
            )


# --- The audit log ---------------------------------------------------------------------------


class Audit(Kind):
    name = "audit"
    append_only = True

    def _rows(self, queryset):
        fields = (
            "at",
            "actor_repr",
            "action",
            "content_type__app_label",
            "content_type__model",
            "object_repr",
            "organization__slug",
            "before",
            "after",
        )
        for r in _values(queryset, *fields):
            ct = r["content_type__app_label"]
            row = {
                "at": stamp(r["at"]),
                "actor": r["actor_repr"],
                "action": r["action"],
                "content_type": f"{ct}.{r['content_type__model']}" if ct else None,
                "object": r["object_repr"],
                "organization": r["organization__slug"],
                "before": r["before"],
                "after": r["after"],
            }
            ident = f"{row['at']}|{row['actor']}|{row['action']}|{row['object']}"
            row["key"] = hashlib.sha256(ident.encode()).hexdigest()[:32]
            yield row

    def source(self, scope):
        yield from self._rows(
            AuditEntry.objects.filter(organization_id__in=scope.organization_ids).order_by("at", "id")
        )

    def map_row(self, row, target):
        return {**row, "organization": target.org(row["organization"])}

    def existing(self, keys, target, rows):
        # Rows are told apart by a hash of when, who, what and on what: compare the
        # target's rows of the same instants.
        wanted = set(keys)
        stamps = {unstamp(row["at"]) for row in rows}
        candidates = AuditEntry.objects.filter(at__in=stamps)
        return {row["key"]: row for row in self._rows(candidates) if row["key"] in wanted}

    def write(self, creates, updates, target):
        types = {}
        for row in creates:
            if row["content_type"] and row["content_type"] not in types:
                app_label, model = row["content_type"].split(".", 1)
                types[row["content_type"]] = (
                    ContentType.objects.filter(app_label=app_label, model=model).first()
                )
        AuditEntry.objects.bulk_create(
            [
                AuditEntry(
                    at=unstamp(row["at"]),
                    actor_repr=row["actor"],
                    action=row["action"],
                    content_type=types.get(row["content_type"]),
                    object_repr=row["object"],
                    organization_id=target.org_id(row["organization"]),
                    before=row["before"],
                    after=row["after"],
                )
                for row in creates
            ]
        )


KINDS: list[Kind] = [
    Organizations(),
    Users(),
    Systems(),
    Mappings(),
    Anomalies(),
    Inventories(),
    ClusterBackups(),
    Quotas(),
    Audit(),
]
BY_NAME = {kind.name: kind for kind in KINDS}
CREDENTIAL_KINDS = ("users", "systems", "mappings")
