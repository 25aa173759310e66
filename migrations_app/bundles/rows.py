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

import orjson
from django.db import connection
from django.db.models import NOT_PROVIDED, F, Lookup, Model, QuerySet
from django.db.models.functions import Lower
from django.db.models.lookups import In
from django.utils.dateparse import parse_datetime

from fleet_app.models import Organization, System, User

BATCH = 1000


def stamp(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def unstamp(value: str | None) -> dt.datetime | None:
    return parse_datetime(value) if value else None


_SCALARS = frozenset((str, int, bool, type(None)))


def canonical_json(row: dict[str, Any]) -> bytes:
    """The bytes a row's digest is taken over: ``json.dumps`` with sorted keys, compact,
    ASCII-escaped. orjson writes the same bytes for a row of strings, integers, booleans
    and nulls whose output is printable ASCII, ten times faster; anything else (nested
    values, floats, non-ASCII text, huge integers) goes through ``json``, so a digest never
    depends on which path made it."""
    if _SCALARS.issuperset(map(type, row.values())):
        try:
            data = orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # an integer beyond 64 bits
            pass
        else:
            # json escapes DEL and everything above it; orjson writes them as they are.
            if data.isascii() and b"\x7f" not in data:
                return data
    return json.dumps(row, sort_keys=True, separators=(",", ":"), default=str).encode()


def row_digest(row: dict[str, Any], volatile: Iterable[str] = ()) -> str:
    kept = row
    if volatile:
        kept = dict(row)
        for name in volatile:
            kept.pop(name, None)
    return hashlib.sha256(canonical_json(kept)).hexdigest()[:32]


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

    def systems_find(self, keys: Iterable[str]) -> None:
        """Look up, in one query, the ids of the systems among ``keys`` not yet known."""
        missing = {key for key in keys if key not in self.systems}
        if missing:
            self.systems.update(
                System.objects.filter(any_of("system_key", missing)).values_list("system_key", "id")
            )

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


_FAST_TZ_LOADER = None


def _plain_values(queryset: QuerySet, *fields: str) -> Iterator[dict[str, Any]]:
    """``_values`` for columns that need no Django converter (text, numbers, booleans,
    uuids, timestamps). On PostgreSQL one server-side cursor reads them with psycopg's
    own timestamp loader: Django's replaces it on the connection with a Python one, which
    was most of an export's time spent reading rows."""
    if connection.vendor != "postgresql":
        yield from _values(queryset, *fields)
        return
    global _FAST_TZ_LOADER
    if _FAST_TZ_LOADER is None:
        import psycopg
        from psycopg.pq import Format

        oid = psycopg.postgres.types["timestamptz"].oid
        _FAST_TZ_LOADER = psycopg.postgres.adapters.get_loader(oid, Format.TEXT)
    sql, params = queryset.values_list(*fields).query.sql_with_params()
    connection.ensure_connection()
    with connection.chunked_cursor() as cursor:
        cursor.cursor.adapters.register_loader("timestamptz", _FAST_TZ_LOADER)
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(5000):
            for values in batch:
                yield dict(zip(fields, values, strict=True))


class _AnyOf(Lookup):
    """``column = ANY(…)`` with the values as one JSON array on PostgreSQL: a batch of a
    thousand keys is one parameter, not a thousand the driver quotes one by one into the
    text of the query. ``IN`` elsewhere."""

    lookup_name = "any_of"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        if connection.vendor != "postgresql":
            return compiler.compile(In(self.lhs, list(self.rhs)))
        lhs, lhs_params = self.process_lhs(compiler, connection)
        cast = self.lhs.output_field.cast_db_type(connection)
        values = orjson.dumps([v if isinstance(v, int | str) else str(v) for v in self.rhs])
        return (
            # The column and its type are the model's; the values are bound.
            f"{lhs} = ANY(ARRAY(SELECT value::{cast} FROM jsonb_array_elements_text(%s::jsonb)))",  # noqa: S608
            [*lhs_params, values.decode()],
        )


def any_of(field_name: str, values: Iterable) -> _AnyOf:
    """A filter: ``field_name`` is one of ``values`` (``.filter(any_of("key", keys))``)."""
    return _AnyOf(F(field_name), list(values))


def _batched(items: Iterable, size: int = BATCH) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def bulk_insert(
    model: type[Model], rows: list[dict[str, Any]], returning: tuple[str, ...] = ()
) -> list[tuple]:
    """Insert ``rows`` (attribute name → value; a field left out takes its default) and
    return the ``returning`` attributes of each (in no particular order). On PostgreSQL
    one ``INSERT … SELECT FROM unnest(…)`` per call, a parameter per column: neither a
    model instance per row nor a statement the driver must splice thousands of parameters
    into. The values must be what psycopg adapts as they are (text, numbers, booleans,
    uuids, aware datetimes, None)."""
    if not rows:
        return []
    if connection.vendor != "postgresql":
        made = model._default_manager.bulk_create([model(**row) for row in rows])
        return [tuple(getattr(obj, name) for name in returning) for obj in made]
    given = set().union(*rows)
    columns, arrays, casts = [], [], []
    for f in model._meta.concrete_fields:
        if f.attname not in given and (f.primary_key or f.db_default is not NOT_PROVIDED):
            continue  # the database's own: the id, or a db_default
        default = None if f.attname in given else f.get_default()
        columns.append(connection.ops.quote_name(f.column))
        arrays.append([row.get(f.attname, default) for row in rows])
        casts.append(f"%s::{f.cast_db_type(connection)}[]")
    table = connection.ops.quote_name(model._meta.db_table)
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - model names, values bound
        f"SELECT * FROM unnest({', '.join(casts)})"
    )
    if returning:
        names = ", ".join(
            connection.ops.quote_name(model._meta.get_field(name).column) for name in returning
        )
        sql += f" RETURNING {names}"
    return binary_execute(sql, arrays, fetch=bool(returning))


def binary_execute(sql: str, params: list, *, fetch: bool = False) -> list[tuple]:
    """Run one statement on Django's connection (in its transaction) with the parameters
    bound by the server, in binary (``%b``): psycopg writes an array of a thousand values
    in a millisecond there, where Django's client-side binding quotes each in Python."""
    import psycopg

    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql.replace("%s", "%b"), params)
        return [tuple(row) for row in cursor.fetchall()] if fetch else []
