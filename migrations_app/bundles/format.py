"""The bundle on disk: a directory, or one uncompressed tar split into chunks.

Both hold the same members: ``data/<kind>.jsonl`` (or ``.jsonl.zst``), the row sections,
and ``blobs/sha256/<2>/<62>``, the blobs by content. ``manifest.json`` lists every member
with its size and sha256 (and, in a tar, its offset in the tar stream), every chunk with
its size and sha256, the producing versions and the selection; its sha256 is the bundle's
global hash and ``manifest.sig`` is an Ed25519 signature over its exact bytes.

One pass writes, hashes and chunks: a blob is read once, copied into the tar stream
through a writer that hashes each chunk as it fills. An import reads the members in place,
at their offsets in the chunks: nothing is extracted to a temporary copy.

A bundle can also travel as one file: the tar stream, then ``manifest.json`` and
``manifest.sig`` as its last members (``bundle_file_stream``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
TAR_BASE = "bundle.tar"
BLOCK = 512
COPY = 1024 * 1024
FORMAT_VERSION = 1


class BundleError(ValueError):
    """A bundle that cannot be read as it should: the message names the file and why."""


def _line(row: dict[str, Any]) -> bytes:
    """One row as a JSON line; orjson, or json for what orjson refuses (an integer beyond
    64 bits, a lone surrogate)."""
    try:
        return orjson.dumps(row, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return json.dumps(row, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _parse(line: bytes) -> Any:
    """One JSON line: orjson, or json for what orjson refuses (NaN, a lone surrogate) or
    reads differently (an integer beyond 64 bits, which orjson makes a float)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)
    return json.loads(line) if _big_float(value) else value


_FLAT = frozenset((str, int, bool, type(None)))


def _big_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer() and abs(value) >= 2**63
    if isinstance(value, dict | list):
        values = value.values() if isinstance(value, dict) else value
        # Most rows are flat: one pass in C over their types settles them.
        return not _FLAT.issuperset(map(type, values)) and any(map(_big_float, values))
    return False


def blob_path(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256[2:]}"


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return b"\0" * ((BLOCK - size % BLOCK) % BLOCK)


class ChunkWriter:
    """Writes a byte stream into ``bundle.tar.0000``, ``.0001``… of at most ``chunk_size``
    bytes each, hashing every chunk as it fills."""

    def __init__(self, folder: Path, chunk_size: int | None):
        self.folder = folder
        self.chunk_size = chunk_size or 0
        self.pos = 0
        self.chunks: list[dict[str, Any]] = []
        self._handle: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._in_chunk = 0

    def _open(self) -> IO[bytes]:
        if self._handle is None:
            name = f"{TAR_BASE}.{len(self.chunks):04d}"
            self._handle = open(self.folder / name, "wb")  # noqa: SIM115 - closed in _close
            self._hash = hashlib.sha256()
            self._in_chunk = 0
            self._name = name
        return self._handle

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self.chunks.append(
                {"name": self._name, "size": self._in_chunk, "sha256": self._hash.hexdigest()}
            )
            self._handle = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            handle = self._open()
            room = (self.chunk_size - self._in_chunk) if self.chunk_size else len(view)
            piece = view[:room]
            handle.write(piece)
            self._hash.update(piece)
            self._in_chunk += len(piece)
            self.pos += len(piece)
            view = view[len(piece) :]
            if self.chunk_size and self._in_chunk >= self.chunk_size:
                self._close()

    def close(self) -> list[dict[str, Any]]:
        self._close()
        return self.chunks


@dataclass
class Entry:
    path: str
    size: int
    sha256: str
    offset: int | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.offset is not None:
            data["offset"] = self.offset
        return data


class BundleWriter:
    """Writes one bundle into an empty folder ``out``."""

    def __init__(
        self, out: Path, *, fmt: str = "dir", chunk_size: int | None = None, compress: bool = False
    ):
        if fmt not in ("dir", "tar"):
            raise BundleError(f"Unknown format {fmt!r}: dir or tar.")
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise BundleError(f"{out} is not empty: a bundle is written into an empty folder.")
        self.out = out
        self.fmt = fmt
        self.compress = compress
        self.entries: list[Entry] = []
        self.sections: list[dict[str, Any]] = []
        self.bytes = 0
        self._tar = ChunkWriter(out, chunk_size) if fmt == "tar" else None
        # Blobs may be copied in by a BlobCopy thread while rows are read: one member at a
        # time goes into the tar stream.
        self._lock = threading.Lock()

    # -- members --------------------------------------------------------------------------

    def _member(self, path: str, size: int, pieces: Iterable[bytes]) -> Entry:
        with self._lock:
            return self._member_locked(path, size, pieces)

    def _member_locked(self, path: str, size: int, pieces: Iterable[bytes]) -> Entry:
        digest = hashlib.sha256()
        written = 0
        if self._tar is not None:
            self._tar.write(_header(path, size))
            offset = self._tar.pos
            for piece in pieces:
                digest.update(piece)
                self._tar.write(piece)
                written += len(piece)
            if written != size:
                raise BundleError(f"{path}: {written} bytes read where {size} were expected.")
            self._tar.write(_padding(size))
            entry = Entry(path, size, digest.hexdigest(), offset)
        else:
            target = self.out / path
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            with open(part, "wb") as handle:
                for piece in pieces:
                    digest.update(piece)
                    handle.write(piece)
                    written += len(piece)
            if written != size:
                part.unlink()
                raise BundleError(f"{path}: {written} bytes read where {size} were expected.")
            os.replace(part, target)
            entry = Entry(path, size, digest.hexdigest())
        self.entries.append(entry)
        self.bytes += size
        return entry

    def add_section(self, kind: str, rows: Iterable[dict[str, Any]]) -> int:
        """Write one kind's rows as JSON lines; returns how many."""
        import tempfile

        count = 0
        with tempfile.TemporaryFile() as spool:
            sink: Any = spool
            compressor = None
            if self.compress:
                compressor = zstandard.ZstdCompressor(level=3).stream_writer(spool, closefd=False)
                sink = compressor
            lines: list[bytes] = []
            held = 0
            for row in rows:
                line = _line(row)
                lines.append(line)
                held += len(line)
                count += 1
                if held >= COPY:
                    sink.write(b"".join(lines))
                    lines, held = [], 0
            sink.write(b"".join(lines))
            if compressor is not None:
                compressor.close()
            size = spool.tell()
            spool.seek(0)
            path = f"data/{kind}.jsonl" + (".zst" if self.compress else "")
            entry = self._member(path, size, iter(lambda: spool.read(COPY), b""))
        self.sections.append(
            {
                "kind": kind,
                "path": entry.path,
                "rows": count,
                "compression": "zstd" if self.compress else None,
            }
        )
        return count

    def add_blob(self, *, sha256: str, size: int, pieces: Iterable[bytes]) -> None:
        """Copy a blob in once; its bytes must hash to ``sha256`` (a store that rotted is
        refused here, not found out on the other side)."""
        entry = self._member(blob_path(sha256), size, pieces)
        if entry.sha256 != sha256:
            raise BundleError(f"blob {sha256}: the stored bytes hash to {entry.sha256}.")

    # -- the end --------------------------------------------------------------------------

    def finish(self, manifest: dict[str, Any], sign) -> tuple[bytes, str]:
        """Write the manifest (with every member and chunk) and its signature; returns the
        manifest's bytes and its sha256 (the global hash)."""
        manifest = dict(manifest)
        manifest["format_version"] = FORMAT_VERSION
        manifest["layout"] = self.fmt
        manifest["sections"] = self.sections
        manifest["files"] = [entry.as_dict() for entry in self.entries]
        if self._tar is not None:
            manifest["tar_size"] = self._tar.pos
            manifest["chunks"] = self._tar.close()
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        signer, signature = sign(data)
        (self.out / MANIFEST).write_bytes(data)
        (self.out / SIGNATURE).write_text(json.dumps({"signer": signer, "signature": signature}))
        return data, hashlib.sha256(data).hexdigest()

    def abort(self) -> None:
        """A failed export leaves nothing that could be taken for a bundle."""
        import shutil

        if self._tar is not None and self._tar._handle is not None:
            self._tar._handle.close()
        shutil.rmtree(self.out, ignore_errors=True)


class Background(threading.Thread):
    """Runs ``action`` on each of ``items`` on a thread of its own while the caller does
    other work. Made for blobs: reading, hashing and writing one release the GIL, so on
    two cores the blobs of a bundle cost little more than its rows."""

    def __init__(self, items: list, action: Callable[[Any], None]):
        super().__init__(name="bundle-blobs", daemon=True)
        self.items = items
        self.action = action
        self.error: BaseException | None = None
        self._stop_asked = threading.Event()

    def run(self) -> None:
        try:
            for item in self.items:
                if self._stop_asked.is_set():
                    return
                self.action(item)
        except BaseException as error:  # re-raised in the caller's thread by finish()
            self.error = error

    def finish(self, on_wait: Callable[[], None] | None = None) -> None:
        """Wait for the last item (calling ``on_wait`` every second meanwhile); raise what
        the thread raised."""
        while self.is_alive():
            self.join(1)
            if on_wait is not None and self.is_alive():
                on_wait()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Finish the item at hand, skip the rest."""
        self._stop_asked.set()
        self.join()


# --- Reading ---------------------------------------------------------------------------------


class _Range(io.RawIOBase):
    """``size`` bytes starting at ``offset`` of a stream split over several files."""

    def __init__(self, spans: list[tuple[Path, int, int]], offset: int, size: int):
        self.spans = spans  # (file, start in the stream, length)
        self.pos = offset
        self.end = offset + size
        self._handle: IO[bytes] | None = None
        self._file: Path | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.pos >= self.end:
            return 0
        for path, start, length in self.spans:
            if start <= self.pos < start + length:
                if self._file != path:
                    if self._handle is not None:
                        self._handle.close()
                    try:
                        self._handle = open(path, "rb")  # noqa: SIM115 - closed in close()
                    except OSError as error:
                        raise BundleError(f"{path.name}: {error.strerror}.") from error
                    self._file = path
                assert self._handle is not None
                self._handle.seek(self.pos - start)
                want = min(len(buffer), self.end - self.pos, start + length - self.pos)
                got = self._handle.readinto(memoryview(buffer)[:want])
                if not got:
                    raise BundleError(f"{path.name} is shorter than the manifest says.")
                self.pos += got
                return got
        raise BundleError("the chunks end before the manifest says they do.")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        super().close()


@dataclass
class BundleSource:
    """A bundle to read: a directory (dir or chunked tar layout) or one tar file."""

    path: Path
    manifest_bytes: bytes = b""
    signature: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    _members: dict[str, tuple[int, int]] = field(default_factory=dict)
    _spans: list[tuple[Path, int, int]] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path) -> BundleSource:
        source = cls(Path(path))
        if source.path.is_dir():
            try:
                source.manifest_bytes = (source.path / MANIFEST).read_bytes()
                signature = (source.path / SIGNATURE).read_text()
            except OSError as error:
                raise BundleError(f"{source.path}: no readable {error.filename}.") from error
        elif source.path.is_file():
            signature = source._scan_single_file()
        else:
            raise BundleError(f"{source.path}: no such bundle (a folder or a .tar file).")
        try:
            source.signature = json.loads(signature)
            source.manifest = json.loads(source.manifest_bytes)
        except (ValueError, UnicodeDecodeError) as error:
            raise BundleError(f"{MANIFEST} or {SIGNATURE} is not valid JSON.") from error
        if not isinstance(source.manifest, dict) or not isinstance(source.signature, dict):
            raise BundleError(f"{MANIFEST} or {SIGNATURE} is not a JSON object.")
        if source.path.is_dir() and source.manifest.get("layout") == "tar":
            stream = 0
            for chunk in source.manifest.get("chunks", []):
                source._spans.append((source.path / chunk["name"], stream, int(chunk["size"])))
                stream += int(chunk["size"])
        return source

    def _scan_single_file(self) -> str:
        """Read the headers of a one-file bundle (no member is extracted)."""
        try:
            with tarfile.open(self.path, mode="r:") as archive:
                for member in archive:
                    self._members[member.name] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError) as error:
            raise BundleError(f"{self.path.name} is not a readable tar file.") from error
        if MANIFEST not in self._members or SIGNATURE not in self._members:
            raise BundleError(f"{self.path.name} holds no {MANIFEST} and {SIGNATURE}.")
        self._spans = [(self.path, 0, self.path.stat().st_size)]
        self.manifest_bytes = self._read_member(MANIFEST)
        return self._read_member(SIGNATURE).decode(errors="replace")

    def _read_member(self, name: str) -> bytes:
        offset, size = self._members[name]
        with _Range(self._spans, offset, size) as handle:
            return handle.read()

    # -- members --------------------------------------------------------------------------

    def raw(self, entry: dict[str, Any]) -> IO[bytes]:
        """The stored bytes of one member, read in place."""
        path, size = entry["path"], int(entry["size"])
        if self._members:
            if path not in self._members:
                raise BundleError(f"{path} is listed in the manifest but not in the file.")
            offset, size = self._members[path]
            return io.BufferedReader(_Range(self._spans, offset, size), COPY)
        if self._spans:
            return io.BufferedReader(_Range(self._spans, int(entry["offset"]), size), COPY)
        file = self.path / path
        try:
            return open(file, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as error:
            raise BundleError(f"{path}: {error.strerror}.") from error

    def pieces(self, entry: dict[str, Any]) -> Iterator[bytes]:
        with self.raw(entry) as handle:
            while piece := handle.read(COPY):
                yield piece

    def section_rows(self, section: dict[str, Any]) -> Iterator[dict[str, Any]]:
        entry = self.entry(section["path"])
        handle = self.raw(entry)
        stream: IO[bytes] = handle
        if section.get("compression") == "zstd":
            stream = zstandard.ZstdDecompressor().stream_reader(handle)  # type: ignore[assignment]
        try:
            for line in io.BufferedReader(stream, COPY) if stream is not handle else handle:  # type: ignore[arg-type]
                if line.strip():
                    yield _parse(line)
        finally:
            handle.close()

    def entry(self, path: str) -> dict[str, Any]:
        for item in self.manifest.get("files", []):
            if item.get("path") == path:
                return item
        raise BundleError(f"{path} is not in the manifest.")

    # -- checks ---------------------------------------------------------------------------

    def verify_files(self, on_bytes=None) -> None:
        """Every chunk (tar) or every member (dir, one file) has its size and sha256; the
        first that does not is named. Reads everything once."""
        if self._spans and not self._members:
            for path, _start, length in self._spans:
                chunk = next(c for c in self.manifest["chunks"] if c["name"] == path.name)
                self._check(
                    path.name, lambda p=path: _file_pieces(p), length, chunk["sha256"], on_bytes
                )
            return
        for item in self.manifest.get("files", []):
            self._check(
                item["path"],
                lambda i=item: self.pieces(i),
                int(item["size"]),
                item["sha256"],
                on_bytes,
            )

    @staticmethod
    def _check(name: str, pieces, size: int, sha256: str, on_bytes) -> None:
        digest = hashlib.sha256()
        seen = 0
        try:
            for piece in pieces():
                digest.update(piece)
                seen += len(piece)
                if on_bytes:
                    on_bytes(len(piece))
        except FileNotFoundError as error:
            raise BundleError(f"{name} is missing.") from error
        if seen != size:
            raise BundleError(f"{name} is {seen} bytes where the manifest says {size}.")
        if digest.hexdigest() != sha256:
            raise BundleError(f"{name} does not match its sha256 in the manifest.")


def _file_pieces(path: Path) -> Iterator[bytes]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise
    with handle:
        while piece := handle.read(COPY):
            yield piece


def bundle_file_stream(folder: Path) -> Iterator[bytes]:
    """One tar file holding the bundle in ``folder``: its members, then the manifest and
    its signature. Streamed: nothing is written to disk."""
    manifest_bytes = (folder / MANIFEST).read_bytes()
    signature = (folder / SIGNATURE).read_bytes()
    manifest = json.loads(manifest_bytes)
    if manifest.get("layout") == "tar":
        for chunk in manifest["chunks"]:
            yield from _file_pieces(folder / chunk["name"])
    else:
        for item in manifest["files"]:
            yield _header(item["path"], int(item["size"]))
            yield from _file_pieces(folder / item["path"])
            yield _padding(int(item["size"]))
    for name, data in ((MANIFEST, manifest_bytes), (SIGNATURE, signature)):
        yield _header(name, len(data)) + data + _padding(len(data))
    yield b"\0" * (2 * BLOCK)
