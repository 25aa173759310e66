"""Every write of an import: verify a bundle, plan it against the target, apply it.

Nothing is written before everything is checked: a signature by a trusted key, the
format, version and schema, the credential digest key, the sequence and the base, every
file's size and sha256, the free disk. The plan counts, per kind, what would be created,
updated, deleted, left alone or is in conflict (a row changed here since the last import
from the same signer), with examples. The apply writes blobs first (temporary names,
moved into place once their sha256 is checked), then rows in batches, each committed with
its checkpoint (kind and rows done) on the run row, so a killed import resumes after it.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string

from fleet_app import access
from fleet_app import services as fleet_services
from fleet_app.models import Organization, User
from fleet_app.runs import run_enqueue, run_finish, run_progress

from . import keys, selectors
from .format import Background, BundleError, BundleSource, blob_path
from .kinds import BY_NAME, KINDS, Kind, Target
from .models import BundleImport, BundleRowState
from .rows import any_of, binary_execute
from .services import (
    BundleRefused,
    _blob_store,
    _schema_unknown,
    _version_tuple,
    cutover_version,
)

EXAMPLES = 5
# The kinds whose rows point at blobs: none of their rows is written before every blob is.
BLOB_KINDS = ("cluster_backups",)
CONFLICT_POLICIES = ("skip", "source", "fail")

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
            actor=actor,
            action="bundle.import_approve",
            obj=locked,
            after={"manifest_sha256": locked.manifest_sha256, "signer": locked.signer},
        )
        run_enqueue(locked)
    return locked


def _refuse(run: BundleImport, reason: str) -> str:
    BundleImport.objects.filter(pk=run.pk).update(plan={"refused": reason})
    run.refresh_from_db()
    return run_finish(run, error=reason)


def bundle_verify(
    source: BundleSource, *, options: dict[str, Any], on_bytes=None
) -> dict[str, Any]:
    """Everything checked before a write; raises BundleRefused naming the file and why."""
    manifest = source.manifest
    signer = str(source.signature.get("signer", ""))
    if not keys.is_trusted(signer):
        raise BundleRefused(
            f"manifest.json is signed by {signer or 'no key'}, which this instance does not trust."
        )
    if not keys.verify(
        signer=signer,
        signature=str(source.signature.get("signature", "")),
        data=source.manifest_bytes,
    ):
        raise BundleRefused("manifest.json does not match its signature in manifest.sig.")
    if manifest.get("format_version") != 1:
        raise BundleRefused(
            f"manifest.json: bundle format {manifest.get('format_version')} is not known here."
        )
    if _version_tuple(str(manifest.get("cutover_version", "0"))) > _version_tuple(
        cutover_version()
    ):
        raise BundleRefused(
            f"manifest.json: made by Cutover {manifest.get('cutover_version')}, "
            f"newer than this {cutover_version()}."
        )
    unknown = _schema_unknown(manifest.get("schema") or {})
    if unknown:
        raise BundleRefused(
            f"manifest.json: the bundle's schema has migration {unknown}, "
            "which this instance does not know."
        )
    if (
        manifest.get("credentials")
        and manifest.get("digest_key_fingerprint") != keys.digest_key_fingerprint()
        and not options.get("fresh_secrets")
    ):
        raise BundleRefused(
            "manifest.json: the bundle's credential digests are under another digest key; "
            "import with fresh secrets to mark those systems for new ones."
        )
    sequence = int(manifest.get("sequence") or 0)
    last = selectors.import_last_sequence(signer)
    applied = set(selectors.imports_applied(signer).values_list("bundle_id", flat=True))
    bundle_id = uuid.UUID(str(manifest.get("bundle_id")))
    if sequence < last or (sequence == last and bundle_id not in applied):
        raise BundleRefused(
            f"manifest.json: sequence {sequence} is older than {last}, "
            "already applied from this source."
        )
    if manifest.get("base_bundle_id") and uuid.UUID(manifest["base_bundle_id"]) not in applied:
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


def _classify(kind, batch, target: Target, signer: str, policy: str, *, states: bool = False):
    """Split one batch into (creates, updates, row states, counts, examples) against the
    target; the row states (key, digest) to record only when ``states`` (an apply)."""
    rows = []
    for original in batch:
        row = kind.map_row(original, target)
        # An organization mapped onto one of the target's is the target's: left alone.
        if kind.name == "organizations" and original["key"] in target.org_map:
            row["_mapped"] = True
        rows.append(row)
    keys_ = [row["key"] for row in rows]
    existing = kind.existing(keys_, target, rows)
    # Only a row the target holds can have changed here since the last import.
    present = [key for key in keys_ if key in existing]
    recorded = (
        dict(
            BundleRowState.objects.filter(signer=signer, kind=kind.name)
            .filter(any_of("key", present))
            .values_list("key", "digest")
        )
        if present
        else {}
    )
    creates, updates, written = [], [], []
    counts = {"create": 0, "update": 0, "unchanged": 0, "conflict": 0, "mapped": 0}
    examples: dict[str, list[str]] = {}
    for row in rows:
        if row.pop("_mapped", False):
            counts["mapped"] += 1
            continue
        ours = existing.get(row["key"])
        # A plan of rows the target lacks needs no digest of them.
        digest = kind.digest(row) if ours is not None or states else ""
        if ours is None:
            verdict = "create"
        else:
            current = kind.digest(ours)
            if current == digest or kind.append_only:
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
        if states and (
            verdict in ("create", "update") or (verdict == "conflict" and policy == "source")
        ):
            written.append((row["key"], digest))
    return creates, updates, written, counts, examples


def _states_save(signer: str, kind: str, states: list[tuple[str, str]]) -> None:
    """Record the digest each row was written with (one upsert of two arrays on
    PostgreSQL)."""
    if not states:
        return
    if connection.vendor != "postgresql":
        BundleRowState.objects.bulk_create(
            [BundleRowState(signer=signer, kind=kind, key=k, digest=d) for k, d in states],
            update_conflicts=True,
            unique_fields=["signer", "kind", "key"],
            update_fields=["digest"],
        )
        return
    table = connection.ops.quote_name(BundleRowState._meta.db_table)
    binary_execute(
        f"INSERT INTO {table} (signer, kind, key, digest) "  # noqa: S608 - model table, values bound
        "SELECT %s::varchar, %s::varchar, k, d "
        "FROM unnest(%s::varchar[], %s::varchar[]) AS s (k, d) "
        "ON CONFLICT (signer, kind, key) DO UPDATE SET digest = EXCLUDED.digest",
        [signer, kind, [k for k, _d in states], [d for _k, d in states]],
    )


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
                    if (
                        parent
                        and parent not in bundled_orgs
                        and not Organization.objects.filter(slug=parent).exists()
                    ):
                        raise BundleRefused(
                            f"data/organizations: {row['key']}'s parent {row['parent']} "
                            "is not on this "
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
    # A blob left out of the bundle (the destination of a pull said it holds it) must be
    # here before anything is written, not found missing half-way through the apply.
    in_bundle = {b["sha256"] for b in manifest.get("blobs", [])}
    for sha256, _size in need.values():
        if sha256 not in in_bundle and not any(kind.blob_local(sha256) for kind in KINDS):
            raise BundleRefused(f"blob {sha256} is neither in the bundle nor on this instance.")
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


def _blob_targets(source: BundleSource) -> Iterator[tuple[str, str, int]]:
    """(storage key here, sha256, size) of every object the bundle's rows own."""
    for section in source.manifest.get("sections", []):
        kind = BY_NAME.get(section["kind"])
        if kind is None or type(kind).blob_target is Kind.blob_target:
            continue
        for row in source.section_rows(section):
            found = kind.blob_target(row)
            if found is not None:
                yield found


def _blobs_needed(source: BundleSource) -> dict[str, tuple[str, int]]:
    """Objects to place: storage key → (sha256, size), for backups the target lacks."""
    store = None
    need: dict[str, tuple[str, int]] = {}
    for storage_key, sha256, size in _blob_targets(source):
        store = store or _blob_store()
        if store.size(storage_key) == size:
            continue
        need[storage_key] = (sha256, size)
    return need


def _blob_jobs(source: BundleSource) -> list[tuple[str, str, Callable[[], Iterator[bytes]]]]:
    """Each missing object: (storage key, sha256, its pieces), from the bundle or from an
    object here with the same sha256."""
    need = _blobs_needed(source)
    store = _blob_store() if need else None
    in_bundle = {b["sha256"] for b in source.manifest.get("blobs", [])}
    jobs = []
    for storage_key, (sha256, _size) in sorted(need.items()):
        if sha256 in in_bundle:
            entry = source.entry(blob_path(sha256))
            jobs.append((storage_key, sha256, functools.partial(source.pieces, entry)))
            continue
        local = next(filter(None, (kind.blob_local(sha256) for kind in KINDS)), None)
        if local is None:
            raise BundleRefused(f"blob {sha256} is neither in the bundle nor on this instance.")
        jobs.append((storage_key, sha256, functools.partial(store.read, local)))
    return jobs


def _blob_place(job: tuple[str, str, Callable[[], Iterator[bytes]]]) -> None:
    """One object, written under a temporary name and moved into place once its sha256 is
    checked (on the placing thread: no database here)."""
    storage_key, sha256, pieces = job
    writer = _blob_store().writer(storage_key)
    digest = hashlib.sha256()
    try:
        for piece in pieces():
            digest.update(piece)
            writer.write(piece)
        if digest.hexdigest() != sha256:
            raise BundleRefused(f"blob {sha256} does not match its sha256.")
        writer.commit()
    except BaseException:
        writer.abort()
        raise


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
            raise BundleRefused(
                f"{plan['conflicts']} rows changed here since the last import (--on-conflict fail)."
            )
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


def _apply(
    run: BundleImport, source: BundleSource, target: Target, signer: str, policy: str
) -> int:
    checkpoint = _resume_point(run)
    run_progress(run, phase="placing blobs")
    jobs = _blob_jobs(source)
    written = len(jobs)
    # The blobs are placed on a thread while the rows that need none are written; the
    # first row that points at a blob waits for all of them.
    placer = Background(jobs, _blob_place)
    placer.start()
    try:
        written += _apply_rows(run, source, target, signer, policy, checkpoint, placer)
        placer.finish()
    except BaseException:
        placer.stop()
        raise
    return written


def _apply_rows(
    run: BundleImport,
    source: BundleSource,
    target: Target,
    signer: str,
    policy: str,
    checkpoint: dict[str, Any],
    placer: Background,
) -> int:
    written = 0
    order = [section["kind"] for section in _sections(source)]
    for section in _sections(source):
        kind = BY_NAME[section["kind"]]
        if kind.name in BLOB_KINDS:
            placer.finish(on_wait=lambda: run_progress(run, phase="placing blobs"))
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
            creates, updates, states, _counts, _ex = _classify(
                kind, batch, target, signer, policy, states=True
            )
            with transaction.atomic():
                if creates or updates:
                    kind.write(creates, updates, target)
                    _states_save(signer, kind.name, states)
                # The checkpoint and the progress in one UPDATE, committed with the batch.
                BundleImport.objects.filter(pk=run.pk).update(
                    checkpoint={"kind": kind.name, "rows": offset},
                    updated_at=timezone.now(),
                    done=F("done") + len(batch),
                    phase=f"rows: {kind.name}",
                )
            written += len(creates) + len(updates)
    stones: dict[str, list[str]] = {}
    for stone in _tombstones(source):
        stones.setdefault(stone["kind"], []).append(stone["key"])
    if stones:
        with transaction.atomic():
            for kind in reversed(KINDS):
                if kind.name in stones:
                    written += kind.delete(stones[kind.name], target)
                    BundleRowState.objects.filter(
                        signer=signer, kind=kind.name, key__in=stones[kind.name]
                    ).delete()
    if target.needs_secrets:
        BundleImport.objects.filter(pk=run.pk).update(
            plan={**run.plan, "needs_fresh_secrets": sorted(target.needs_secrets)}
        )
    return written
