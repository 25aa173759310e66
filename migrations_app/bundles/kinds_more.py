"""Bundle rows beyond the fleet: legacy mappings, fingerprint anomalies, inventories, cluster
backups, quotas and the audit log. Other capabilities' models are reached by label."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from django.apps import apps
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.models import Model, OuterRef, Subquery

from fleet_app.models import AuditEntry, Inventory, Quota

from .rows import Kind, _plain_values, _values, any_of, bulk_insert, stamp, unstamp

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
        for r in _plain_values(queryset, *fields, *MAPPING_STAMPS):
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
        rows = model._default_manager.filter(any_of("legacy_system_id", keys))
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

        target.systems_find(row["system"] for row in creates + updates)
        bulk_insert(
            model,
            [
                {"legacy_system_id": row["key"], "legacy_token_digest": "", **fields(row)}
                for row in creates
            ],
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
            seen = stamp(r["first_seen_at"])
            key = f"{r['system__system_key']}|{r['claimed_legacy_system_id']}|{seen}"
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
            self._manager()
            .filter(system__organization_id__in=scope.organization_ids)
            .order_by("id")
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
            if connection.features.can_distinct_on_fields:
                # The newest of each system (DISTINCT ON walks fleet_inv_sys_recv_idx).
                rows = rows.order_by("system_id", "-received_at").distinct("system_id")
            else:  # SQLite, the embedded default: the same rows by a correlated subquery.
                newest = Inventory.objects.filter(system_id=OuterRef("system_id"))
                rows = rows.filter(
                    pk=Subquery(newest.order_by("-received_at", "-pk").values("pk")[:1])
                ).order_by("system_id")
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
        for r in _plain_values(queryset.filter(corrupt_at__isnull=True), *fields):
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
            self._manager()
            .filter(organization_id__in=scope.organization_ids)
            .order_by("uploaded_at")
        )

    def map_row(self, row, target):
        return {**row, "organization": target.org(row["organization"])}

    def blob(self, row):
        return row["sha256"], row["size"], row["storage_key"]

    def blob_target(self, row):
        return row["storage_key"], row["sha256"], row["size"]

    def blob_local(self, sha256):
        found = self._manager().filter(sha256=sha256, corrupt_at__isnull=True).first()
        return found.storage_key if found is not None else None

    def existing(self, keys, target, rows):
        ids = [uuid.UUID(key) for key in keys]
        return {row["key"]: row for row in self._rows(self._manager().filter(any_of("id", ids)))}

    def write(self, creates, updates, target):
        model = _model("backups_app.ClusterBackup")
        target.systems_find(row["system"] for row in creates)
        bulk_insert(
            model,
            [
                {
                    "id": uuid.UUID(row["key"]),
                    "system_id": target.system_id(row["system"]),
                    "organization_id": target.org_id(row["organization"]),
                    "filename": row["filename"],
                    "mimetype": row["mimetype"],
                    "size": row["size"],
                    "sha256": row["sha256"],
                    "storage_key": row["storage_key"],
                    "uploaded_at": unstamp(row["uploaded_at"]),
                }
                for row in creates
            ],
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
            holder = (
                f"org:{r['organization__slug']}"
                if r["organization__slug"]
                else f"user:{(r['user__email'] or '').lower()}"
            )
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
            AuditEntry.objects.filter(organization_id__in=scope.organization_ids).order_by(
                "at", "id"
            )
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
                types[row["content_type"]] = ContentType.objects.filter(
                    app_label=app_label, model=model
                ).first()
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
