"""The source's half of a pull: an export made to be streamed, and its chunks on demand.

A streamed export is a recorded export run (``BundleExport`` with format ``stream``) whose
tar stream is never written whole: the export makes one pass that fixes the stream's
layout (every member's header, offset and size, exactly as a ``tar`` bundle's) and hashes
it chunk by chunk for the signed manifest; a chunk is produced again each time the
destination asks for it, from the byte offset it asks for (``Range``).

Why regenerate rather than keep the chunks: the blobs are the bulk of a bundle and are
stored by sha256, so they never change under their name; a chunk reads them again from
the blob store and comes out byte for byte the same. The rows do change (the database
moves on after the export), so the row sections, a snapshot of the moment of the export,
are the one part written down: ``data/*.jsonl`` under the export's folder in
``BUNDLE_EXPORT_ROOT``, small next to the blobs, kept and pruned with the other exports
(``BUNDLE_EXPORT_KEEP`` per selection). A blob is copied there too only when the export
cannot say where it reads it from again (``storage_key`` unknown). So the source's disk
holds the manifest and the rows, never a second copy of the blobs, and every chunk has
the sha256 the signed manifest gives it; the destination checks that as it arrives.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import zstandard
from django.conf import settings
from django.utils.module_loading import import_string

from .format import (
    BLOCK,
    COPY,
    FORMAT_VERSION,
    MANIFEST,
    SIGNATURE,
    TAR_BASE,
    BundleError,
    _header,
    _padding,
    blob_path,
)

FORMAT = "stream"
DEFAULT_CHUNK_BYTES = 64 * 1024**2
# Where each blob of a streamed export is read from again: sha256 → storage key.
BLOB_KEYS = "blob_keys.json"


class BlobPieces:
    """A blob's bytes from the blob store, and where they came from (so a streamed export
    can read them again instead of keeping a copy)."""

    def __init__(self, store, storage_key: str):
        self.store = store
        self.storage_key = storage_key

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.store.read(self.storage_key))


class _ChunkHashes:
    """The sha256 of every ``chunk_size`` bytes of a stream nobody writes down."""

    def __init__(self, chunk_size: int):
        self.chunk_size = chunk_size
        self.pos = 0
        self.chunks: list[dict[str, Any]] = []
        self._hash = hashlib.sha256()
        self._in_chunk = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            piece = view[: self.chunk_size - self._in_chunk]
            self._hash.update(piece)
            self._in_chunk += len(piece)
            self.pos += len(piece)
            view = view[len(piece) :]
            if self._in_chunk == self.chunk_size:
                self._close()

    def _close(self) -> None:
        if self._in_chunk:
            name = f"{TAR_BASE}.{len(self.chunks):04d}"
            self.chunks.append(
                {"name": name, "size": self._in_chunk, "sha256": self._hash.hexdigest()}
            )
            self._hash = hashlib.sha256()
            self._in_chunk = 0

    def close(self) -> list[dict[str, Any]]:
        self._close()
        return self.chunks


class StreamWriter:
    """What ``format.BundleWriter`` is for a ``tar`` bundle, for a streamed one: the same
    members, offsets and manifest; on disk only the row sections and the manifest."""

    fmt = "tar"

    def __init__(self, out: Path, *, chunk_size: int | None = None, compress: bool = False):
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise BundleError(f"{out} is not empty: a bundle is written into an empty folder.")
        self.out = out
        self.compress = compress
        self.entries: list[dict[str, Any]] = []
        self.sections: list[dict[str, Any]] = []
        self.bytes = 0
        self.blob_keys: dict[str, str] = {}
        self._hashes = _ChunkHashes(chunk_size or DEFAULT_CHUNK_BYTES)

    def _member(self, path: str, size: int, pieces: Iterable[bytes], keep: bool) -> dict:
        digest = hashlib.sha256()
        written = 0
        self._hashes.write(_header(path, size))
        offset = self._hashes.pos
        copy = None
        if keep:
            (self.out / path).parent.mkdir(parents=True, exist_ok=True)
            copy = open(self.out / path, "wb")  # noqa: SIM115 - closed below
        try:
            for piece in pieces:
                digest.update(piece)
                self._hashes.write(piece)
                if copy is not None:
                    copy.write(piece)
                written += len(piece)
        finally:
            if copy is not None:
                copy.close()
        if written != size:
            raise BundleError(f"{path}: {written} bytes read where {size} were expected.")
        self._hashes.write(_padding(size))
        entry = {"path": path, "size": size, "sha256": digest.hexdigest(), "offset": offset}
        self.entries.append(entry)
        self.bytes += size
        return entry

    def add_section(self, kind: str, rows: Iterable[dict[str, Any]]) -> int:
        import tempfile

        count = 0
        with tempfile.TemporaryFile(dir=self.out) as spool:
            sink: Any = spool
            compressor = None
            if self.compress:
                compressor = zstandard.ZstdCompressor(level=3).stream_writer(spool, closefd=False)
                sink = compressor
            for row in rows:
                sink.write(json.dumps(row, separators=(",", ":"), sort_keys=True).encode())
                sink.write(b"\n")
                count += 1
            if compressor is not None:
                compressor.close()
            size = spool.tell()
            spool.seek(0)
            path = f"data/{kind}.jsonl" + (".zst" if self.compress else "")
            entry = self._member(path, size, iter(lambda: spool.read(COPY), b""), keep=True)
        self.sections.append(
            {
                "kind": kind,
                "path": entry["path"],
                "rows": count,
                "compression": "zstd" if self.compress else None,
            }
        )
        return count

    def add_blob(self, *, sha256: str, size: int, pieces: Iterable[bytes]) -> None:
        storage_key = getattr(pieces, "storage_key", None)
        entry = self._member(blob_path(sha256), size, pieces, keep=storage_key is None)
        if entry["sha256"] != sha256:
            raise BundleError(f"blob {sha256}: the stored bytes hash to {entry['sha256']}.")
        if storage_key is not None:
            self.blob_keys[sha256] = storage_key

    def finish(self, manifest: dict[str, Any], sign) -> tuple[bytes, str]:
        manifest = dict(manifest)
        manifest["format_version"] = FORMAT_VERSION
        manifest["layout"] = "tar"
        manifest["sections"] = self.sections
        manifest["files"] = self.entries
        manifest["tar_size"] = self._hashes.pos
        manifest["chunks"] = self._hashes.close()
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        signer, signature = sign(data)
        (self.out / BLOB_KEYS).write_text(json.dumps(self.blob_keys, sort_keys=True))
        (self.out / MANIFEST).write_bytes(data)
        (self.out / SIGNATURE).write_text(json.dumps({"signer": signer, "signature": signature}))
        return data, hashlib.sha256(data).hexdigest()

    def abort(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)


# --- Serving ---------------------------------------------------------------------------------


class StreamGone(LookupError):
    """The export's folder (or a blob it reads) is no longer on this instance."""


def stream_manifest(folder: Path) -> tuple[bytes, dict[str, Any]]:
    """The manifest's exact bytes and its signature."""
    try:
        return (folder / MANIFEST).read_bytes(), json.loads((folder / SIGNATURE).read_text())
    except OSError as error:
        raise StreamGone(
            "This export's files are gone (retention): ask for a new export."
        ) from error


def _member_pieces(
    folder: Path, item: dict[str, Any], keys: dict[str, str], store
) -> Iterator[bytes]:
    path, size = item["path"], int(item["size"])
    yield _header(path, size)
    kept = folder / path
    if kept.is_file():
        with open(kept, "rb") as handle:
            while piece := handle.read(COPY):
                yield piece
    else:
        sha256 = path.removeprefix("blobs/sha256/").replace("/", "")
        if sha256 not in keys:
            raise StreamGone(f"{path} is not on this instance any more.")
        yield from store.read(keys[sha256])
    yield _padding(size)


class _Layout:
    """A streamed export's manifest read once: chunk bounds and members in stream order."""

    def __init__(self, folder: Path):
        data, _signature = stream_manifest(folder)
        manifest = json.loads(data)
        self.chunk_starts = [0]
        for chunk in manifest["chunks"]:
            self.chunk_starts.append(self.chunk_starts[-1] + int(chunk["size"]))
        self.files = sorted(manifest["files"], key=lambda i: int(i["offset"]))
        # Where each member (header, data, padding) ends: a chunk's first member by bisection.
        self.ends = [
            int(i["offset"]) + int(i["size"]) + (-int(i["size"]) % BLOCK) for i in self.files
        ]
        path = folder / BLOB_KEYS
        self.keys: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}


@functools.lru_cache(maxsize=16)
def _layout(folder: Path, stamp: float) -> _Layout:
    return _Layout(folder)


def _layout_of(folder: Path) -> _Layout:
    """Cached per export (a pull asks for its chunks one after the other); the manifest's
    mtime is in the key, so a folder written anew is read anew."""
    try:
        stamp = (folder / MANIFEST).stat().st_mtime
    except OSError as error:
        raise StreamGone(
            "This export's files are gone (retention): ask for a new export."
        ) from error
    return _layout(folder, stamp)


def chunk_size_of(folder: Path, index: int) -> int:
    starts = _layout_of(folder).chunk_starts
    if not 0 <= index < len(starts) - 1:
        raise IndexError(f"This export has {len(starts) - 1} chunks: index {index} is not one.")
    return starts[index + 1] - starts[index]


def chunk_pieces(folder: Path, index: int, start: int = 0) -> Iterator[bytes]:
    """Chunk ``index`` of a streamed export from byte ``start`` of the chunk: the members
    that overlap it, clipped to it. The same bytes every time (see the module's note)."""
    layout = _layout_of(folder)
    begin = layout.chunk_starts[index] + start
    end = layout.chunk_starts[index + 1]
    store = import_string(settings.BUNDLE_BLOB_STORE)() if layout.keys else None
    for item in layout.files[bisect.bisect_right(layout.ends, begin) :]:
        first = int(item["offset"]) - BLOCK
        if first >= end:
            break
        pos = first
        for piece in _member_pieces(folder, item, layout.keys, store):
            low, high = max(begin - pos, 0), min(end - pos, len(piece))
            if low < high:
                yield piece[low:high]
            pos += len(piece)
            if pos >= end:
                return


def stream_file(folder: Path) -> Iterator[bytes]:
    """A streamed export as one tar file (what the admin's download gives): its chunks,
    produced as for a pull, then the manifest and its signature."""
    layout = _layout_of(folder)
    for index in range(len(layout.chunk_starts) - 1):
        yield from chunk_pieces(folder, index)
    data, signature = stream_manifest(folder)
    sig = json.dumps(signature).encode()
    for name, body in ((MANIFEST, data), (SIGNATURE, sig)):
        yield _header(name, len(body)) + body + _padding(len(body))
    yield b"\0" * (2 * BLOCK)
