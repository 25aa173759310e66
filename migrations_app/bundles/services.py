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

from fleet_app import access, services as fleet_services
from fleet_app.models import Organization, User
from fleet_app.runs import run_enqueue, run_finish, run_progress

from . import keys, selectors
from .format import BundleError, BundleSource, BundleWriter
from .kinds import BY_NAME, CREDENTIAL_KINDS, KINDS, Scope, Target
from .models import BundleExport, BundleImport, BundleRowState, BundleSelection

EXAMPLES = 5
CONFLICT_POLICIES = ("skip", "source", "fail")


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
    *, actor: User | None, name: str, organizations: list[str], kinds: list[str],
    inventories: str = "latest", credentials: bool = False,
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
            actor=actor, action="bundle.selection_save", obj=row,
            after={"organizations": row.organizations, "kinds": row.kinds},
        )
    return row


def _kinds_check(kinds: list[str]) -> None:
    unknown = [k for k in kinds if k not in BY_NAME]
    if unknown:
        raise BundleRefused(
            f"Unknown kind {unknown[0]!r}: choose from {', '.join(BY_NAME)}."
        )


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
    if not organizations:
        raise BundleRefused("Name the organizations to export (or a saved selection).")
    kinds = kinds or [kind.name for kind in KINDS]
    _kinds_check(kinds)
    if fmt not in ("dir", "tar"):
        raise BundleRefused(f"Unknown format {fmt!r}: dir or tar.")
    try:
        orgs = selectors.organizations_of(organizations)
    except LookupError as error:
        raise BundleRefused(str(error)) from error
    if actor is not None and access.persona(actor) not in access.PLATFORM_PERSONAS:
        outside = orgs.exclude(path__startswith=actor.organization.path if actor.organization_id else "~")
        if outside.exists():
            raise BundleRefused(
                f"{actor.email} may export only its own organization's subtree."
            )
    if credentials and actor is not None and not access.allowed(
        actor, "action", "migrations_app.bundleexport.credentials", "r"
    ):
        raise BundleRefused(f"{actor.email} may not export credential digests.")
    scope = {
        "organizations": sorted(set(organizations)),
        "kinds": [k.name for k in KINDS if k.name in kinds],
        "credentials": bool(credentials and set(kinds) & set(CREDENTIAL_KINDS)),
        "inventories": inventories,
    }
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
            raise BundleRefused(f"Export {since} is of another selection: an incremental needs the same one.")
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
    name = run.selection.name if run.selection else "-".join(run.scope["organizations"])[:80]
    return _export_root() / name / f"{run.created_at:%Y%m%d-%H%M%S}-{run.sequence}"


def bundle_export_work(*, run: BundleExport, on_progress: Callable | None = None) -> str:
    scope_data = run.scope
    organization_ids = list(selectors.organizations_of(scope_data["organizations"]).values_list("id", flat=True))
    scope = Scope(organization_ids, scope_data["credentials"], scope_data["inventories"])
    base_state = _state_load(run.base.state_path) if run.base else {}
    have = set(scope_data.get("have", []))
    out = Path(run.output) if run.output else _default_output(run)
    writer = BundleWriter(out, fmt=run.format, chunk_size=run.chunk_size, compress=run.compress)
    state: dict[str, dict[str, str]] = {}
    tombstones: list[dict[str, str]] = []
    blobs: dict[str, tuple[int, str]] = {}
    counts: dict[str, int] = {}
    try:
        for name in scope_data["kinds"]:
            kind = BY_NAME[name]
            seen = state.setdefault(name, {})
            before = base_state.get(name, {})

            def rows(kind=kind, seen=seen, before=before) -> Iterator[dict]:
                for row in kind.source(scope):
                    digest = kind.digest(row)
                    seen[row["key"]] = digest
                    if before.get(row["key"]) == digest:
                        continue
                    if kind.name == "cluster_backups" and row["sha256"] not in have:
                        blobs.setdefault(row["sha256"], (row["size"], row["storage_key"]))
                    yield row

            counts[name] = writer.add_section(name, rows())
            run_progress(run, done=counts[name], phase=f"rows: {name}")
            if before and not kind.append_only:
                tombstones.extend({"kind": name, "key": key} for key in before.keys() - seen.keys())
        writer.add_section("tombstones", tombstones)
        store = _blob_store() if blobs else None
        for sha256, (size, storage_key) in sorted(blobs.items()):
            writer.add_blob(sha256=sha256, size=size, pieces=store.read(storage_key))
            run_progress(run, phase="blobs")
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
        }
        _data, manifest_sha256 = writer.finish(manifest, keys.sign)
    except Exception:
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


# --- Imports ---------------------------------------------------------------------------------


def org_map_parse(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise BundleRefused(f"{pair!r} is not SOURCE=TARGET.")
        mapping[source.strip()] = target.strip()
    return mapping


def bundle_import_create(
    *,
    actor: User | None,
    path: str,
    apply: bool = False,
    org_map: dict[str, str] | None = None,
    on_conflict: str = "skip",
    fresh_secrets: bool = False,
    enqueue: bool = False,
) -> BundleImport:
    if actor is not None and not access.allowed(actor, "command", "import_bundle", "r"):
        raise BundleRefused(f"{actor.email} may not import bundles.")
    if on_conflict not in CONFLICT_POLICIES:
        raise BundleRefused(f"--on-conflict is one of {', '.join(CONFLICT_POLICIES)}.")
    with transaction.atomic():
        run = BundleImport.objects.create(
            path=path,
            apply=apply,
            options={
                "org_map": org_map or {},
                "on_conflict": on_conflict,
                "fresh_secrets": fresh_secrets,
            },
            created_by=actor,
        )
        if enqueue:
            run_enqueue(run)
    return run


def bundle_import_approve(*, actor: User | None, run: BundleImport) -> BundleImport:
    """Approve a planned import: it is applied by a worker."""
    with transaction.atomic():
        locked = BundleImport.objects.select_for_update().get(pk=run.pk)
        if locked.applied_at or locked.state != "succeeded" or not locked.plan:
            raise BundleRefused("Only a planned, not yet applied import can be approved.")
        if locked.plan.get("refused"):
            raise BundleRefused("This bundle was refused; there is nothing to approve.")
        locked.apply = True
        locked.approved_at = timezone.now()
        locked.state = "pending"
        locked.finished_at = None
        locked.save(update_fields=["apply", "approved_at", "state", "finished_at"])
        fleet_services.audit_record(
            actor=actor, action="bundle.import_approve", obj=locked,
            after={"manifest_sha256": locked.manifest_sha256, "signer": locked.signer},
        )
        run_enqueue(locked)
    return locked


def _refuse(run: BundleImport, reason: str) -> str:
    BundleImport.objects.filter(pk=run.pk).update(plan={"refused": reason})
    run.refresh_from_db()
    return run_finish(run, error=reason)


def bundle_verify(source: BundleSource, *, options: dict[str, Any], on_bytes=None) -> dict[str, Any]:
    """Everything checked before a write; raises BundleRefused naming the file and why."""
    manifest = source.manifest
    signer = str(source.signature.get("signer", ""))
    if not keys.is_trusted(signer):
        raise BundleRefused(f"manifest.json is signed by {signer or 'no key'}, which this instance does not trust.")
    if not keys.verify(signer=signer, signature=str(source.signature.get("signature", "")), data=source.manifest_bytes):
        raise BundleRefused("manifest.json does not match its signature in manifest.sig.")
    if manifest.get("format_version") != 1:
        raise BundleRefused(f"manifest.json: bundle format {manifest.get('format_version')} is not known here.")
    if _version_tuple(str(manifest.get("cutover_version", "0"))) > _version_tuple(cutover_version()):
        raise BundleRefused(
            f"manifest.json: made by Cutover {manifest.get('cutover_version')}, newer than this {cutover_version()}."
        )
    unknown = _schema_unknown(manifest.get("schema") or {})
    if unknown:
        raise BundleRefused(f"manifest.json: the bundle's schema has migration {unknown}, which this instance does not know.")
    if manifest.get("credentials") and manifest.get("digest_key_fingerprint") != keys.digest_key_fingerprint():
        if not options.get("fresh_secrets"):
            raise BundleRefused(
                "manifest.json: the bundle's credential digests are under another digest key; "
                "import with fresh secrets to mark those systems for new ones."
            )
    sequence = int(manifest.get("sequence") or 0)
    last = selectors.import_last_sequence(signer)
    applied = set(selectors.imports_applied(signer).values_list("bundle_id", flat=True))
    import uuid as _uuid

    bundle_id = _uuid.UUID(str(manifest.get("bundle_id")))
    if sequence < last or (sequence == last and bundle_id not in applied):
        raise BundleRefused(
            f"manifest.json: sequence {sequence} is older than {last}, already applied from this source."
        )
    if manifest.get("base_bundle_id") and _uuid.UUID(manifest["base_bundle_id"]) not in applied:
        raise BundleRefused("manifest.json: this incremental's base bundle was never applied here.")
    try:
        source.verify_files(on_bytes)
    except BundleError as error:
        raise BundleRefused(str(error)) from error
    return {"signer": signer, "sequence": sequence, "bundle_id": bundle_id}


def _target(options: dict[str, Any], manifest: dict[str, Any]) -> Target:
    return Target(
        org_map=dict(options.get("org_map") or {}),
        credentials=bool(manifest.get("credentials")),
        fresh_secrets=bool(options.get("fresh_secrets"))
        and manifest.get("digest_key_fingerprint") != keys.digest_key_fingerprint(),
    )


def _sections(source: BundleSource) -> list[dict[str, Any]]:
    order = [kind.name for kind in KINDS]
    found = [s for s in source.manifest.get("sections", []) if s["kind"] in order]
    return sorted(found, key=lambda s: order.index(s["kind"]))


def _batches(source: BundleSource, section: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in source.section_rows(section):
        batch.append(row)
        if len(batch) >= settings.BUNDLE_BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _classify(kind, batch, target: Target, signer: str, policy: str):
    """Split one batch into (creates, updates, counts, examples) against the target."""
    rows = []
    for original in batch:
        row = kind.map_row(original, target)
        # An organization mapped onto one of the target's is the target's: left alone.
        if kind.name == "organizations" and original["key"] in target.org_map:
            row["_mapped"] = True
        rows.append(row)
    keys_ = [row["key"] for row in rows]
    existing = kind.existing(keys_, target, rows)
    recorded = dict(
        BundleRowState.objects.filter(signer=signer, kind=kind.name, key__in=keys_).values_list("key", "digest")
    )
    creates, updates, states = [], [], []
    counts = {"create": 0, "update": 0, "unchanged": 0, "conflict": 0, "mapped": 0}
    examples: dict[str, list[str]] = {}
    for row in rows:
        if row.pop("_mapped", False):
            counts["mapped"] += 1
            continue
        digest = kind.digest(row)
        ours = existing.get(row["key"])
        if ours is None:
            verdict = "create"
        else:
            current = kind.digest(ours)
            if current == digest:
                verdict = "unchanged"
            elif kind.append_only:
                verdict = "unchanged"
            elif recorded.get(row["key"]) == current:
                verdict = "update"
            else:
                verdict = "conflict"
        counts[verdict] += 1
        if verdict not in ("unchanged",) and len(examples.setdefault(verdict, [])) < EXAMPLES:
            examples[verdict].append(row["key"])
        if verdict == "create":
            creates.append(row)
        elif verdict == "update" or (verdict == "conflict" and policy == "source"):
            updates.append(row)
        if verdict in ("create", "update") or (verdict == "conflict" and policy == "source"):
            states.append(BundleRowState(signer=signer, kind=kind.name, key=row["key"], digest=digest))
    return creates, updates, states, counts, examples


def _plan(source: BundleSource, target: Target, signer: str, policy: str) -> dict[str, Any]:
    manifest = source.manifest
    plan: dict[str, Any] = {"kinds": {}, "examples": {}}
    bundled_orgs: set[str] = set()
    for section in _sections(source):
        kind = BY_NAME[section["kind"]]
        totals = {"create": 0, "update": 0, "unchanged": 0, "conflict": 0, "mapped": 0, "delete": 0}
        examples: dict[str, list[str]] = {}
        for batch in _batches(source, section):
            if kind.name == "organizations":
                for row in batch:
                    mapped = kind.map_row(row, target)
                    bundled_orgs.add(mapped["key"])
                    parent = mapped["parent"]
                    if parent and parent not in bundled_orgs and not Organization.objects.filter(slug=parent).exists():
                        raise BundleRefused(
                            f"data/organizations: {row['key']}'s parent {row['parent']} is not on this "
                            f"instance: map it with --map-org {row['parent']}=<slug here>."
                        )
            _c, _u, _s, counts, found = _classify(kind, batch, target, signer, policy)
            for verdict, n in counts.items():
                totals[verdict] += n
            for verdict, items in found.items():
                room = EXAMPLES - len(examples.setdefault(verdict, []))
                examples[verdict].extend(items[:room])
        plan["kinds"][kind.name] = totals
        plan["examples"][kind.name] = examples
    for stone in _tombstones(source):
        kind = BY_NAME.get(stone["kind"])
        if kind is None:
            continue
        key = stone["key"]
        if kind.existing([key], target, [{"key": key}]) if kind.name != "audit" else {}:
            entry = plan["kinds"].setdefault(kind.name, {"delete": 0})
            entry["delete"] = entry.get("delete", 0) + 1
            items = plan["examples"].setdefault(kind.name, {}).setdefault("delete", [])
            if len(items) < EXAMPLES:
                items.append(key)
    need = _blobs_needed(source)
    free = _free_bytes()
    plan["blobs"] = {
        "in_bundle": len(manifest.get("blobs", [])),
        "to_place": len(need),
        "bytes_needed": sum(size for _sha, size in need.values()),
        "bytes_free": free,
    }
    plan["fresh_secrets"] = target.fresh_secrets
    plan["conflicts"] = sum(t.get("conflict", 0) for t in plan["kinds"].values())
    if plan["blobs"]["bytes_needed"] + settings.BUNDLE_DISK_RESERVE_BYTES > free:
        raise BundleRefused(
            f"blobs: {plan['blobs']['bytes_needed']} bytes are needed and only {free} are free."
        )
    return plan


def _tombstones(source: BundleSource) -> Iterator[dict[str, str]]:
    for section in source.manifest.get("sections", []):
        if section["kind"] == "tombstones":
            yield from source.section_rows(section)


def _free_bytes() -> int:
    root = Path(settings.BACKUP_LOCAL_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(root).free


def _backup_rows(source: BundleSource) -> Iterator[dict[str, Any]]:
    for section in source.manifest.get("sections", []):
        if section["kind"] == "cluster_backups":
            yield from source.section_rows(section)


def _blobs_needed(source: BundleSource) -> dict[str, tuple[str, int]]:
    """Objects to place: storage key → (sha256, size), for backups the target lacks."""
    store = None
    need: dict[str, tuple[str, int]] = {}
    for row in _backup_rows(source):
        store = store or _blob_store()
        if store.size(row["storage_key"]) == row["size"]:
            continue
        need[row["storage_key"]] = (row["sha256"], row["size"])
    return need


def _place_blobs(source: BundleSource, run: BundleImport) -> int:
    """Each missing object from the bundle (or from an object here with the same sha256),
    written under a temporary name and moved into place once its sha256 is checked."""
    need = _blobs_needed(source)
    if not need:
        return 0
    store = _blob_store()
    in_bundle = {b["sha256"] for b in source.manifest.get("blobs", [])}
    placed = 0
    for storage_key, (sha256, size) in sorted(need.items()):
        if sha256 in in_bundle:
            from .format import blob_path

            pieces = source.pieces(source.entry(blob_path(sha256)))
        else:
            local = _model_backup().objects.filter(sha256=sha256, corrupt_at__isnull=True).first()
            if local is None:
                raise BundleRefused(f"blob {sha256} is neither in the bundle nor on this instance.")
            pieces = store.read(local.storage_key)
        writer = store.writer(storage_key)
        digest = hashlib.sha256()
        try:
            for piece in pieces:
                digest.update(piece)
                writer.write(piece)
            if digest.hexdigest() != sha256:
                raise BundleRefused(f"blob {sha256} does not match its sha256.")
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        placed += 1
        run_progress(run, phase="blobs")
    return placed


def _model_backup():
    from django.apps import apps

    return apps.get_model("backups_app", "ClusterBackup")


def bundle_import_work(*, run: BundleImport, on_progress: Callable | None = None) -> str:
    """Verify, plan and (``run.apply``) apply one bundle; a refusal fails the run with the
    reason and writes nothing else."""
    try:
        source = BundleSource.open(Path(run.path))
        run_progress(run, phase="verifying")
        identity = bundle_verify(source, options=run.options)
        target = _target(run.options, source.manifest)
        policy = run.options.get("on_conflict", "skip")
        BundleImport.objects.filter(pk=run.pk).update(
            bundle_id=identity["bundle_id"],
            base_bundle_id=source.manifest.get("base_bundle_id"),
            signer=identity["signer"],
            sequence=identity["sequence"],
            manifest_sha256=hashlib.sha256(source.manifest_bytes).hexdigest(),
        )
        run_progress(run, phase="planning")
        plan = _plan(source, target, identity["signer"], policy)
        if run.apply and policy == "fail" and plan["conflicts"]:
            raise BundleRefused(f"{plan['conflicts']} rows changed here since the last import (--on-conflict fail).")
    except (BundleRefused, BundleError) as error:
        return _refuse(run, str(error))
    BundleImport.objects.filter(pk=run.pk).update(plan=plan)
    run.refresh_from_db()
    if not run.apply:
        return run_finish(run)
    try:
        written = _apply(run, source, target, identity["signer"], policy)
    except (BundleRefused, BundleError, LookupError) as error:
        return _refuse(run, str(error))
    with transaction.atomic():
        BundleImport.objects.filter(pk=run.pk).update(applied_at=timezone.now(), written=written)
        fleet_services.audit_record(
            actor=run.created_by,
            action="bundle.import",
            obj=run,
            after={
                "manifest_sha256": run.manifest_sha256,
                "signer": run.signer,
                "sequence": run.sequence,
                "written": written,
            },
        )
    if written:
        for hook in settings.BUNDLE_AFTER_APPLY:
            import_string(hook)()
    run.refresh_from_db()
    return run_finish(run)


def _resume_point(run: BundleImport) -> dict[str, Any]:
    """Where an earlier, interrupted apply of the same bundle stopped."""
    if run.checkpoint:
        return run.checkpoint
    earlier = (
        BundleImport.objects.filter(bundle_id=run.bundle_id, apply=True, applied_at__isnull=True)
        .exclude(pk=run.pk)
        .exclude(checkpoint={})
        .order_by("-pk")
        .first()
    )
    return dict(earlier.checkpoint) if earlier else {}


def _apply(run: BundleImport, source: BundleSource, target: Target, signer: str, policy: str) -> int:
    checkpoint = _resume_point(run)
    written = 0
    run_progress(run, phase="placing blobs")
    written += _place_blobs(source, run)
    order = [section["kind"] for section in _sections(source)]
    for section in _sections(source):
        kind = BY_NAME[section["kind"]]
        done_kind = checkpoint.get("kind")
        if done_kind in order and order.index(done_kind) > order.index(kind.name):
            continue
        # Rows, not batches: a resume with another batch size still starts where it was.
        skip = checkpoint.get("rows", 0) if done_kind == kind.name else 0
        offset = 0
        for batch in _batches(source, section):
            offset += len(batch)
            if offset <= skip:
                continue
            if offset - len(batch) < skip:
                batch = batch[skip - (offset - len(batch)) :]
            creates, updates, states, _counts, _ex = _classify(kind, batch, target, signer, policy)
            with transaction.atomic():
                if creates or updates:
                    kind.write(creates, updates, target)
                    BundleRowState.objects.bulk_create(
                        states,
                        update_conflicts=True,
                        unique_fields=["signer", "kind", "key"],
                        update_fields=["digest"],
                    )
                mark = {"kind": kind.name, "rows": offset}
                BundleImport.objects.filter(pk=run.pk).update(checkpoint=mark, updated_at=timezone.now())
            written += len(creates) + len(updates)
            run_progress(run, done=len(batch), phase=f"rows: {kind.name}")
    stones: dict[str, list[str]] = {}
    for stone in _tombstones(source):
        stones.setdefault(stone["kind"], []).append(stone["key"])
    if stones:
        with transaction.atomic():
            for kind in reversed(KINDS):
                if kind.name in stones:
                    written += kind.delete(stones[kind.name], target)
                    BundleRowState.objects.filter(signer=signer, kind=kind.name, key__in=stones[kind.name]).delete()
    if target.needs_secrets:
        BundleImport.objects.filter(pk=run.pk).update(
            plan={**run.plan, "needs_fresh_secrets": sorted(target.needs_secrets)}
        )
    return written


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
                actor=actor, action="bundle.key_trust", obj=row, after={"key_id": ident, "name": name}
            )
    return ident
