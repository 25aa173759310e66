"""The destination's half of a pull: fetch a bundle from another instance, then import it.

A pull is a ``BundleImport`` whose origin is another instance: its address, a staff API
token of an account there (sealed with ``fleet_app.sealing``; cleared when the fetch
ends), and the selection asked for. The worker (or ``import_bundle --from``) asks the
source for a streamed export, sending the sha256 of every blob held here (those stay
out of the bundle), waits for it, fetches the signed manifest (refused at once unless a
trusted key signed it), then the chunks one by one into the pull's folder under
``BUNDLE_UPLOAD_ROOT``: each arrives as ``<name>.part`` and takes its name only once its
sha256 is the manifest's. From then on it is a bundle like an uploaded one: verified
whole, planned, and applied when asked (``--apply``) or approved.

An interrupted fetch (a dropped connection, a killed process) fails the run and says so;
the same pull started again finds that run (same source, same selection, its export on
record) and fetches only what is not here yet: the chunks not yet verified, a partial
chunk from its first missing byte (``Range``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.apps import apps
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_date

from fleet_app.locks import LockHeld, named_lock
from fleet_app.models import User
from fleet_app.runs import run_claim, run_enqueue, run_finish, run_log, run_progress
from fleet_app.sealing import seal, unseal

from . import importing, keys
from .format import COPY, MANIFEST, SIGNATURE
from .models import BundleImport
from .services import BundleRefused

SEAL_PURPOSE = "migrations_app.bundles.pull-token"
STREAMS = "/api/bundles/streams/"
POLL_SECONDS = 0.5
# How long a pull waits for the source to finish its export (it hashes every blob once).
WAIT_SECONDS = 6 * 3600
TIMEOUT = httpx.Timeout(120.0, connect=15.0)


def remote_url_check(url: str) -> str:
    """The source's base address, normalized; refused unless https (or http to loopback,
    since the token travels with every request)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise BundleRefused(f"{url!r} is not the http(s) address of another Cutover instance.")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise BundleRefused(
            "A pull sends an API token with every request: give an https:// address "
            "(plain http only to this machine's loopback)."
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bundle_pull_create(
    *,
    actor: User | None,
    url: str,
    token: str,
    organizations: list[str] | None = None,
    selection: str | None = None,
    kinds: list[str] | None = None,
    since: str | None = None,
    chunk_size: int | None = None,
    inventories: str = "latest",
    credentials: bool = False,
    apply: bool = False,
    org_map: dict[str, str] | None = None,
    on_conflict: str = "skip",
    fresh_secrets: bool = False,
    enqueue: bool = False,
) -> BundleImport:
    """Record a pull (pending). The same pull asked again (same source and selection)
    carries on from an earlier one that did not finish fetching, or that was planned and
    not applied: its chunks are not fetched again."""
    base = remote_url_check(url)
    token = token.strip()
    if not token or not token.isascii() or any(c.isspace() for c in token):
        raise BundleRefused("The token file holds no API token (one line, what the source issued).")
    if since and not since.isdigit() and parse_date(since) is None:
        raise BundleRefused(f"{since!r} is neither an export id on the source nor a date.")
    request = {
        "organizations": sorted(set(organizations or [])),
        "selection": selection or "",
        "kinds": sorted(set(kinds or [])),
        "since": since or "",
        "chunk_size": chunk_size or 0,
        "inventories": inventories,
        "credentials": bool(credentials),
    }
    with transaction.atomic():
        run = importing.bundle_import_create(
            actor=actor,
            path="",
            apply=apply,
            org_map=org_map,
            on_conflict=on_conflict,
            fresh_secrets=fresh_secrets,
        )
        earlier = _resumable(base, request)
        fields: dict[str, Any] = {
            "remote_url": base,
            "remote_request": request,
            "remote_token": seal(token.encode(), purpose=SEAL_PURPOSE),
            "path": str(Path(settings.BUNDLE_UPLOAD_ROOT) / "pulls" / uuid.uuid4().hex),
        }
        if earlier is not None:
            fields.update(
                path=earlier.path,
                remote_export=earlier.remote_export,
                bytes_total=earlier.bytes_total,
                fetched_at=earlier.fetched_at,
            )
        BundleImport.objects.filter(pk=run.pk).update(**fields)
        run.refresh_from_db()
        if enqueue:
            run_enqueue(run)
    return run


def _resumable(base: str, request: dict[str, Any]) -> BundleImport | None:
    """The last pull of this selection from this source, if it can be carried on: not
    applied, its export on record, its folder still here; and either not fully fetched,
    or fetched and planned (then ``--apply`` applies what it fetched)."""
    earlier = (
        BundleImport.objects.filter(remote_url=base, remote_request=request)
        .exclude(state="pending")
        .order_by("-pk")
        .first()
    )
    if (
        earlier is None
        or earlier.applied_at is not None
        or earlier.remote_export is None
        or not Path(earlier.path).is_dir()
    ):
        return None
    if earlier.fetched_at is None:
        return earlier
    refused = (earlier.plan or {}).get("refused")
    return earlier if earlier.state == "succeeded" and not refused else None


def bundle_pull_work(*, run: BundleImport, on_progress=None) -> str:
    """A run's work: a pull fetches what is not here yet, then it is imported like a file
    (``importing.bundle_import_work``); any other import goes straight there."""
    if not run.remote_url or run.fetched_at is not None:
        return _import(run)
    # Marked running (a command works its run itself): a pull found running and not
    # holding its folder's lock has died, and the next pull carries on from it.
    run_claim(run)
    try:
        _fetch(run)
    except BundleRefused as error:
        BundleImport.objects.filter(pk=run.pk).update(remote_token="", plan={"refused": str(error)})
        run.refresh_from_db()
        return run_finish(run, error=str(error))
    BundleImport.objects.filter(pk=run.pk).update(remote_token="", fetched_at=timezone.now())
    run.refresh_from_db()
    return _import(run)


def _import(run: BundleImport) -> str:
    state = importing.bundle_import_work(run=run)
    run.refresh_from_db()
    if run.remote_url and run.applied_at is not None:
        # Applied: the pulled chunks have done their work (a re-import needs a new pull).
        shutil.rmtree(run.path, ignore_errors=True)
    return state


# --- Fetching --------------------------------------------------------------------------------


def _fetch(run: BundleImport) -> None:
    token = unseal(run.remote_token, purpose=SEAL_PURPOSE) if run.remote_token else None
    if token is None:
        raise BundleRefused("This pull's token is gone (the pull ended): start the pull again.")
    folder = Path(run.path)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with named_lock(f"bundle-pull:{folder}"):
            # Holding the folder's lock: a pull still marked running on it has died (a
            # killed process or worker); this one carries on with what it fetched.
            BundleImport.objects.filter(path=run.path, state="running").exclude(pk=run.pk).update(
                state="failed",
                error=f"Interrupted; carried on by import {run.pk}.",
                remote_token="",
                finished_at=timezone.now(),
            )
            _fetch_into(run, folder, token.decode())
    except LockHeld as error:
        raise BundleRefused("Another pull is fetching this bundle: wait for it.") from error


def _fetch_into(run: BundleImport, folder: Path, token: str) -> None:
    headers = {"Authorization": f"Token {token}"}
    with httpx.Client(base_url=run.remote_url, headers=headers, timeout=TIMEOUT) as client:
        try:
            export_id = run.remote_export or _start(client, run)
            _wait(client, run, export_id)
            manifest = _manifest(client, run, export_id, folder)
            chunks = manifest.get("chunks") or []
            BundleImport.objects.filter(pk=run.pk).update(
                bytes_total=int(manifest.get("tar_size") or 0)
            )
            sent = sum(
                _chunk(client, run, export_id, index, chunk, folder)
                for index, chunk in enumerate(chunks)
            )
            total = sum(int(chunk["size"]) for chunk in chunks)
            run_log(run, f"fetched {sent} bytes from the source; {total - sent} were here already")
        except BundleRefused:
            raise
        except httpx.HTTPError as error:
            raise BundleRefused(
                f"The connection to {run.remote_url} broke ({type(error).__name__}): "
                "run the same pull again to fetch what is still missing."
            ) from error
        except OSError as error:
            raise BundleRefused(f"{folder}: {error.strerror or error}.") from error
        except (ValueError, KeyError, TypeError) as error:
            raise BundleRefused(
                f"{run.remote_url} does not answer as a Cutover instance's staff API does."
            ) from error


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return json.dumps(body)[:300]


def _check(response: httpx.Response, what: str, run: BundleImport) -> None:
    code = response.status_code
    if code < 400:
        return
    response.read()
    detail = _detail(response)
    if code == 401:
        raise BundleRefused(f"The source refused the API token (401): {detail}")
    if code == 403:
        raise BundleRefused(f"The source refused this pull (403): {detail}")
    if code == 404:
        raise BundleRefused(f"The source has no {what} this token reaches (404): {detail}")
    if code == 410:
        # Not resumable any more: the next pull of the selection asks for a new export.
        BundleImport.objects.filter(pk=run.pk).update(remote_export=None)
        raise BundleRefused(f"The source no longer holds its export ({detail}): pull again.")
    raise BundleRefused(f"The source answered {code} to the request for {what}: {detail}")


def _start(client: httpx.Client, run: BundleImport) -> int:
    asked = run.remote_request
    body: dict[str, Any] = {
        key: asked[key]
        for key in ("organizations", "selection", "kinds", "chunk_size")
        if asked.get(key)
    }
    body["inventories"] = asked.get("inventories", "latest")
    body["credentials"] = bool(asked.get("credentials"))
    since = asked.get("since") or ""
    if since:
        body["since_export" if since.isdigit() else "since_date"] = since
    backup = apps.get_model("backups_app", "ClusterBackup")
    body["have"] = sorted(
        set(backup.objects.filter(corrupt_at__isnull=True).values_list("sha256", flat=True))
    )
    run_progress(run, phase="asking the source for an export")
    response = client.post(STREAMS, json=body)
    _check(response, "export of this selection", run)
    export_id = int(response.json()["id"])
    BundleImport.objects.filter(pk=run.pk).update(remote_export=export_id)
    return export_id


def _wait(client: httpx.Client, run: BundleImport, export_id: int) -> None:
    run_progress(run, phase="waiting for the source's export")
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        response = client.get(f"{STREAMS}{export_id}/")
        _check(response, f"export {export_id}", run)
        state = response.json().get("state")
        if state == "succeeded":
            return
        if state in ("failed", "partially_failed"):
            raise BundleRefused(
                f"The source's export {export_id} failed: {response.json().get('error') or state}"
            )
        if time.monotonic() > deadline:
            raise BundleRefused(f"The source's export {export_id} did not finish in time.")
        time.sleep(POLL_SECONDS)


def _manifest(client: httpx.Client, run: BundleImport, export_id: int, folder: Path) -> dict:
    """The signed manifest, refused before any chunk is fetched unless a trusted key
    signed it; kept in the folder (a resumed pull must find the same one)."""
    response = client.get(f"{STREAMS}{export_id}/manifest/")
    _check(response, f"manifest of export {export_id}", run)
    body = response.json()
    data = str(body.get("manifest", "")).encode()
    signature = body.get("signature") or {}
    signer = str(signature.get("signer", ""))
    if not keys.is_trusted(signer):
        raise BundleRefused(
            f"manifest.json is signed by {signer or 'no key'}, which this instance does not trust."
        )
    if not keys.verify(signer=signer, signature=str(signature.get("signature", "")), data=data):
        raise BundleRefused("manifest.json does not match its signature in manifest.sig.")
    kept = folder / MANIFEST
    if kept.exists() and kept.read_bytes() != data:
        raise BundleRefused(f"{folder} holds the chunks of another export: start the pull again.")
    kept.write_bytes(data)
    (folder / SIGNATURE).write_text(json.dumps(signature))
    manifest = json.loads(data)
    if manifest.get("layout") != "tar":
        raise BundleRefused("manifest.json: the source did not export a chunked tar stream.")
    return manifest


def _chunk(
    client: httpx.Client,
    run: BundleImport,
    export_id: int,
    index: int,
    chunk: dict[str, Any],
    folder: Path,
) -> int:
    """Fetch one chunk unless it is here verified; returns the bytes that crossed the wire."""
    name, size = str(chunk["name"]), int(chunk["size"])
    if "/" in name or name.startswith("."):
        raise BundleRefused(f"manifest.json names a chunk {name!r} outside the bundle.")
    final = folder / name
    if final.exists() and final.stat().st_size == size:
        # Renamed only once its sha256 matched: fetched and verified by an earlier run.
        run_progress(run, phase=f"fetched {name}")
        _fetched(run, size)
        return 0
    part = folder / f"{name}.part"
    held = part.stat().st_size if part.exists() else 0
    if held >= size:
        part.unlink()
        held = 0
    digest = hashlib.sha256()
    if held:
        with open(part, "rb") as handle:
            while piece := handle.read(COPY):
                digest.update(piece)
    run_progress(run, phase=f"fetching {name}")
    start = held
    headers = {"Range": f"bytes={held}-"} if held else {}
    with client.stream(
        "GET", f"{STREAMS}{export_id}/chunk/", params={"index": index}, headers=headers
    ) as response:
        _check(response, f"chunk {name}", run)
        mode = "ab"
        if held and response.status_code != 206:
            # The whole chunk came back, not the rest of it: start the file again.
            digest, start, mode = hashlib.sha256(), 0, "wb"
        with open(part, mode) as handle:
            # As it arrives, flushed: a pull killed mid-chunk keeps what it had, and the
            # next one asks only for the rest.
            for piece in response.iter_bytes():
                handle.write(piece)
                handle.flush()
                digest.update(piece)
    got = part.stat().st_size
    if got != size or digest.hexdigest() != chunk["sha256"]:
        part.unlink()
        raise BundleRefused(
            f"{name} does not match its sha256 in the manifest ({got} of {size} bytes "
            "arrived): nothing was imported."
        )
    os.replace(part, final)
    _fetched(run, size)
    return size - start


def _fetched(run: BundleImport, size: int) -> None:
    from django.db.models import F

    BundleImport.objects.filter(pk=run.pk).update(
        bytes_fetched=F("bytes_fetched") + size, updated_at=timezone.now()
    )
