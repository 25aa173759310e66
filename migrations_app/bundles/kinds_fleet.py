"""Bundle rows of the fleet itself: organizations, users (with roles and memberships) and
systems (with their credential digests)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.db.models.functions import Lower

from fleet_app.models import Membership, Organization, System, User, canonical_email_key

from .rows import (
    Kind,
    _batched,
    _plain_values,
    _values,
    any_of,
    bulk_insert,
    stamp,
    unstamp,
)

BATCH = 1000

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
                    # bulk_create skips save(), which keeps this derived column.
                    email_key=canonical_email_key(row["email"]),
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
                "email_key": canonical_email_key(row["email"]),
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
        return (
            User.objects.annotate(low=Lower("email")).filter(low__in=keys).update(is_active=False)
        )


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
        for r in _plain_values(queryset, *fields, "secret_public", "secret_digest"):
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
        for row in self._rows(System.objects.filter(any_of("system_key", keys))):
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
            # An address the bundle left blank is no address (as the model stores it).
            fields["ipv4_address"] = fields["ipv4_address"] or None
            fields["ipv6_address"] = fields["ipv6_address"] or None
            made.append({"system_key": row["key"], **fields})
        target.systems.update(bulk_insert(System, made, returning=("system_key", "id")))
        if not updates:
            return
        existing = {
            s.system_key: s
            for s in System.objects.filter(system_key__in=[r["key"] for r in updates])
        }
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
        System.objects.bulk_update(
            changed, [*names, "secret_public", "secret_digest"], batch_size=BATCH
        )

    def delete(self, keys, target):
        from django.utils import timezone

        return System.objects.filter(system_key__in=keys, deleted_at__isnull=True).update(
            deleted_at=timezone.now()
        )
