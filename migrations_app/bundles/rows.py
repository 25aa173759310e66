"""The shape every kind of bundle row shares.

Each kind of row a bundle carries: which rows a selection reaches, how a row is written
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet
from django.db.models.functions import Lower
from django.utils.dateparse import parse_datetime

from fleet_app.models import Organization, System, User

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
    # The platform's own infrastructure (service backups, replication jobs): only in an
    # export the platform itself makes, never in a tenant's subtree.
    platform: bool = False


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
    # Rows of no organization (the platform's infrastructure): they go only in a platform
    # export (``Scope.platform``), whatever organizations are selected.
    platform = False

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

    def blob(self, row: dict[str, Any]) -> tuple[str, int, str] | None:
        """The object a row owns here, to carry: (sha256, size, storage key here)."""
        return None

    def blob_target(self, row: dict[str, Any]) -> tuple[str, str, int] | None:
        """Where a row's object lands on the target: (storage key there, sha256, size)."""
        return None

    def blob_local(self, sha256: str) -> str | None:
        """The storage key of an object here with this content, if a row of this kind has one."""
        return None

    def digest(self, row: dict[str, Any]) -> str:
        return row_digest(row, self.volatile)

    def strip(self, row: dict[str, Any], credentials: bool) -> dict[str, Any]:
        if credentials:
            return row
        return {k: v for k, v in row.items() if k not in self.credential_fields}


def _values(queryset: QuerySet, *fields: str) -> Iterator[dict[str, Any]]:
    return queryset.values(*fields).iterator(chunk_size=2000)


def _batched(items: Iterable, size: int = BATCH) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
