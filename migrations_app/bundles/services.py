"""Every write of bundles: export a selection, verify and plan a bundle, apply it.

An export is one pass over the selected rows and blobs (``format.BundleWriter``); it keeps
the digest of every row it carried (its *state*), which the next incremental export of the
same selection compares against: changed rows go, and keys that vanished go as tombstones.

An import refuses anything it cannot trust before the first write: a signature that is
not a trusted key's, a schema or a version the target does not know, a file whose sha256
or size is off, a missing chunk, an older sequence than one applied, an incremental whose
base was never applied, a credential digest key that differs, a disk too small. Then it
plans (per kind: create, update, unchanged, conflict, delete, with examples) and, when
applied, writes blobs first (under temporary names, moved into place once their sha256 is
checked), then rows in batches, each committed with its checkpoint on the run row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import zstandard
from django.conf import settings
from django.db import transaction
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.module_loading import import_string

from fleet_app import access
from fleet_app import services as fleet_services
from fleet_app.models import User
from fleet_app.runs import run_enqueue, run_finish, run_progress

from . import keys, selectors
from .format import Background, BundleWriter
from .kinds import BY_NAME, CREDENTIAL_KINDS, KINDS, Scope
from .models import BundleExport, BundleSelection
from .stream_source import FORMAT as STREAM_FORMAT
from .stream_source import BlobPieces, StreamWriter

# The table's row for carrying the platform's infrastructure (service backups, replication
# jobs) in an export.
PLATFORM_EXPORT = ("action", "migrations_app.bundleexport.platform")


class BundleRefused(ValueError):
    """A request or a bundle refused with one sentence; nothing was written."""


# --- Versions --------------------------------------------------------------------------------


def cutover_version() -> str:
    try:
        return metadata.version("cutover")
    except metadata.PackageNotFoundError:
        return "0"


def schema_heads() -> dict[str, list[str]]:
    """Every app's latest migrations (the leaves of its graph)."""
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    heads: dict[str, list[str]] = {}
    for app, name in graph.leaf_nodes():
        heads.setdefault(app, []).append(name)
    return {app: sorted(names) for app, names in sorted(heads.items())}


def _schema_unknown(heads: dict[str, list[str]]) -> str | None:
    known = MigrationLoader(None, ignore_no_migrations=True).graph.nodes
    for app, names in heads.items():
        for name in names:
            if (app, name) not in known:
                return f"{app}.{name}"
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:2]:
        parts.append(int(part) if part.isdigit() else 0)
    return tuple(parts)


# --- Selections and exports -----------------------------------------------------------------


def size_parse(text: str | None) -> int | None:
    """``100MB``, ``1GiB``, ``4096``: a chunk size in bytes (None for no chunking)."""
    if not text:
        return None
    raw = text.strip().upper().replace("IB", "B")
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "B": 1}
    for unit, factor in units.items():
        if raw.endswith(unit) and raw[: -len(unit)].strip().isdigit():
            value = int(raw[: -len(unit)]) * factor
            break
    else:
        if not raw.isdigit():
            raise BundleRefused(f"{text!r} is not a size (bytes, or a number with KB, MB, GB).")
        value = int(raw)
    if value < 1024:
        raise BundleRefused("A chunk is at least 1 KB.")
    return value


def selection_save(
    *,
    actor: User | None,
    name: str,
    organizations: list[str],
    kinds: list[str],
    inventories: str = "latest",
    credentials: bool = False,
) -> BundleSelection:
    _kinds_check(kinds)
    selectors.organizations_of(organizations)
    with transaction.atomic():
        row, _ = BundleSelection.objects.update_or_create(
            name=name,
            defaults={
                "organizations": sorted(organizations),
                "kinds": kinds,
                "inventories": inventories,
                "credentials": credentials,
            },
        )
        fleet_services.audit_record(
            actor=actor,
            action="bundle.selection_save",
            obj=row,
            after={"organizations": row.organizations, "kinds": row.kinds},
        )
    return row


def _kinds_check(kinds: list[str]) -> None:
    unknown = [k for k in kinds if k not in BY_NAME]
    if unknown:
        raise BundleRefused(f"Unknown kind {unknown[0]!r}: choose from {', '.join(BY_NAME)}.")


def _scope_key(scope: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(scope, sort_keys=True).encode()).hexdigest()[:32]


def bundle_export_create(
    *,
    actor: User | None,
    organizations: list[str] | None = None,
    selection: str | None = None,
    kinds: list[str] | None = None,
    since: str | None = None,
    fmt: str = "dir",
    chunk_size: int | None = None,
    compress: bool = False,
    credentials: bool = False,
    inventories: str = "latest",
    output: str = "",
    have: list[str] | None = None,
    enqueue: bool = False,
) -> BundleExport:
    """Record an export (pending); ``enqueue`` sends it to a worker, else the caller runs
    ``bundle_export_work`` itself."""
    saved = None
    if selection:
        try:
            saved = selectors.selection_get(selection)
        except LookupError as error:
            raise BundleRefused(str(error)) from error
        organizations = list(saved.organizations)
        kinds = kinds or list(saved.kinds)
        credentials = credentials or saved.credentials
        inventories = saved.inventories
    # Every kind by default, but the platform's infrastructure only when named: a
    # subtree export never carries it unasked.
    kinds = kinds or [kind.name for kind in KINDS if not kind.platform]
    _kinds_check(kinds)
    platform = [k for k in kinds if BY_NAME[k].platform]
    if platform and actor is not None and not access.allowed(actor, *PLATFORM_EXPORT, "r"):
        raise BundleRefused(
            f"{actor.email} may not export {' or '.join(platform)}: "
            "they are the platform's infrastructure, exported only by a superuser."
        )
    if not organizations and len(platform) < len(kinds):
        raise BundleRefused("Name the organizations to export (or a saved selection).")
    if fmt not in ("dir", "tar", STREAM_FORMAT):
        raise BundleRefused(f"Unknown format {fmt!r}: dir or tar.")
    organizations = organizations or []
    try:
        orgs = selectors.organizations_of(organizations)
    except LookupError as error:
        raise BundleRefused(str(error)) from error
    if actor is not None and access.persona(actor) not in access.PLATFORM_PERSONAS:
        outside = orgs.exclude(
            path__startswith=actor.organization.path if actor.organization_id else "~"
        )
        if outside.exists():
            raise BundleRefused(f"{actor.email} may export only its own organization's subtree.")
    if (
        credentials
        and actor is not None
        and not access.allowed(actor, "action", "migrations_app.bundleexport.credentials", "r")
    ):
        raise BundleRefused(f"{actor.email} may not export credential digests.")
    scope = {
        "organizations": sorted(set(organizations)),
        "kinds": [k.name for k in KINDS if k.name in kinds],
        "credentials": bool(credentials and set(kinds) & set(CREDENTIAL_KINDS)),
        "inventories": inventories,
    }
    if platform:
        # Only when set: the scope keys of subtree exports stay what they were.
        scope["platform"] = True
    key = _scope_key(scope)
    base = _since_base(since, key) if since else None
    with transaction.atomic():
        # The sequence is the instance's: lock so two exports cannot take the same one.
        BundleExport.objects.select_for_update().order_by("-sequence").first()
        run = BundleExport.objects.create(
            sequence=selectors.export_next_sequence(),
            selection=saved,
            scope={**scope, "have": sorted(have or [])},
            scope_key=key,
            base=base,
            format=fmt,
            chunk_size=chunk_size,
            compress=compress,
            output=output,
            created_by=actor,
        )
        if enqueue:
            run_enqueue(run)
    return run


def _since_base(since: str, scope_key: str) -> BundleExport:
    if since.isdigit():
        base = BundleExport.objects.filter(pk=int(since), state="succeeded").first()
        if base is None:
            raise BundleRefused(f"No finished export has the id {since}.")
        if base.scope_key != scope_key:
            raise BundleRefused(
                f"Export {since} is of another selection: an incremental needs the same one."
            )
        return base
    when = parse_datetime(since)
    if when is None and (day := parse_date(since)) is not None:
        when = dt.datetime.combine(day, dt.time.max)
    if when is None:
        raise BundleRefused(f"{since!r} is neither an export id nor a date.")
    if timezone.is_naive(when):
        when = timezone.make_aware(when, dt.UTC)
    base = selectors.export_at(scope_key, when)
    if base is None:
        raise BundleRefused(f"No export of this selection was made on or before {since}.")
    return base


def _export_root() -> Path:
    return Path(settings.BUNDLE_EXPORT_ROOT)


def _state_load(path: str) -> dict[str, dict[str, str]]:
    if not path or not Path(path).exists():
        raise BundleRefused("The base export's row digests are gone: make a full export.")
    with open(path, "rb") as handle:
        return json.loads(zstandard.ZstdDecompressor().stream_reader(handle).read())


def _state_save(run: BundleExport, state: dict[str, dict[str, str]]) -> str:
    folder = _export_root() / "state"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run.bundle_id}.json.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(json.dumps(state).encode()))
    return str(path)


def _blob_store():
    return import_string(settings.BUNDLE_BLOB_STORE)()


def _default_output(run: BundleExport) -> Path:
    name = (
        run.selection.name
        if run.selection
        else "-".join(run.scope["organizations"])[:80] or "platform"
    )
    return _export_root() / name / f"{run.created_at:%Y%m%d-%H%M%S}-{run.sequence}"


def bundle_export_work(*, run: BundleExport, on_progress: Callable | None = None) -> str:
    scope_data = run.scope
    organization_ids = list(
        selectors.organizations_of(scope_data["organizations"]).values_list("id", flat=True)
    )
    scope = Scope(
        organization_ids,
        scope_data["credentials"],
        scope_data["inventories"],
        platform=bool(scope_data.get("platform")),
    )
    base_state = _state_load(run.base.state_path) if run.base else {}
    have = set(scope_data.get("have", []))
    out = Path(run.output) if run.output else _default_output(run)
    writer: BundleWriter | StreamWriter
    if run.format == STREAM_FORMAT:
        writer = StreamWriter(out, chunk_size=run.chunk_size, compress=run.compress)
    else:
        writer = BundleWriter(out, fmt=run.format, chunk_size=run.chunk_size, compress=run.compress)
    state: dict[str, dict[str, str]] = {}
    tombstones: list[dict[str, str]] = []
    blobs: dict[str, tuple[int, str]] = {}
    held: dict[str, int] = {}
    counts: dict[str, int] = {}
    copier: Background | None = None
    kinds = list(scope_data["kinds"])
    try:
        for name in kinds:
            kind = BY_NAME[name]
            seen = state.setdefault(name, {})
            before = base_state.get(name, {})

            def rows(kind=kind, seen=seen, before=before) -> Iterator[dict]:
                for row in kind.source(scope):
                    digest = kind.digest(row)
                    seen[row["key"]] = digest
                    if before.get(row["key"]) == digest:
                        continue
                    blob = kind.blob(row)
                    if blob is not None and blob[0] not in have:
                        blobs.setdefault(blob[0], (blob[1], blob[2]))
                    elif blob is not None:
                        held[blob[0]] = blob[1]
                    yield row

            counts[name] = writer.add_section(name, rows())
            run_progress(run, done=counts[name], phase=f"rows: {name}")
            if before and not kind.append_only:
                tombstones.extend({"kind": name, "key": key} for key in before.keys() - seen.keys())
        writer.add_section("tombstones", tombstones)
        # Blobs of every kind, once all rows are read: a streamed export records where each
        # one is (it is read again for each fetch); a file export copies them on a thread.
        store = _blob_store() if blobs else None
        if isinstance(writer, StreamWriter):
            for sha256, (size, storage_key) in sorted(blobs.items()):
                writer.add_blob(sha256=sha256, size=size, pieces=BlobPieces(store, storage_key))
                run_progress(run, phase="blobs")
        elif blobs:
            copier = Background(
                sorted(blobs.items()),
                lambda item: writer.add_blob(
                    sha256=item[0], size=item[1][0], pieces=store.read(item[1][1])
                ),
            )
            copier.start()
            copier.finish(on_wait=lambda: run_progress(run, phase="blobs"))
        manifest = {
            "bundle_id": str(run.bundle_id),
            "sequence": run.sequence,
            "created_at": run.created_at.isoformat(),
            "cutover_version": cutover_version(),
            "schema": schema_heads(),
            "selection": {k: v for k, v in scope_data.items() if k != "have"},
            "selection_name": run.selection.name if run.selection else None,
            "incremental": run.base is not None,
            "base_bundle_id": str(run.base.bundle_id) if run.base else None,
            "base_sequence": run.base.sequence if run.base else None,
            "digest_key_fingerprint": keys.digest_key_fingerprint(),
            "credentials": scope_data["credentials"],
            "blobs": [{"sha256": s, "size": size} for s, (size, _k) in sorted(blobs.items())],
            "omitted_blobs": len(have),
            # Blobs of the selection the destination said it holds: not in the bundle, and
            # the import checks they are there before it writes anything.
            "held_blobs": [{"sha256": s, "size": n} for s, n in sorted(held.items())],
        }
        _data, manifest_sha256 = writer.finish(manifest, keys.sign)
    except Exception:
        if copier is not None:
            copier.stop()
        writer.abort()
        raise
    state_path = _state_save(run, state)
    with transaction.atomic():
        BundleExport.objects.filter(pk=run.pk).update(
            output=str(out),
            state_path=state_path,
            manifest_sha256=manifest_sha256,
            rows=sum(counts.values()) + len(tombstones),
            bytes=writer.bytes,
        )
        fleet_services.audit_record(
            actor=run.created_by,
            action="bundle.export",
            obj=run,
            after={
                "manifest_sha256": manifest_sha256,
                "signer": keys.own_key_id(),
                "sequence": run.sequence,
                "organizations": scope_data["organizations"],
                "credentials": scope_data["credentials"],
            },
        )
    run.refresh_from_db()
    state_name = run_finish(run)
    _retention(out.parent)
    return state_name


def _retention(folder: Path) -> None:
    """Keep the newest ``BUNDLE_EXPORT_KEEP`` bundles of a selection under the root."""
    root = _export_root().resolve()
    if root not in folder.resolve().parents:
        return
    bundles = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)
    for old in bundles[: -settings.BUNDLE_EXPORT_KEEP] if settings.BUNDLE_EXPORT_KEEP else []:
        shutil.rmtree(old, ignore_errors=True)


def trusted_key_add(*, actor: User | None, text: str, name: str = "") -> str:
    from .models import TrustedBundleKey

    try:
        raw = keys.parse_public(text)
    except keys.KeyError_ as error:
        raise BundleRefused(str(error)) from error
    ident = keys.key_id(raw)
    with transaction.atomic():
        row, created = TrustedBundleKey.objects.get_or_create(
            key_id=ident, defaults={"public_key": raw.hex(), "name": name}
        )
        if created:
            fleet_services.audit_record(
                actor=actor,
                action="bundle.key_trust",
                obj=row,
                after={"key_id": ident, "name": name},
            )
    return ident
