"""The blob store: one small interface, two backends (a local folder, an S3 bucket).

Writes are two-phase so that a failed or short upload leaves nothing behind:
``writer(key)`` opens a temporary object (a ``.part`` file, an S3 multipart upload),
``write()`` streams chunks into it, ``commit()`` makes it the object at ``key`` and
``abort()`` throws it away. Only after ``commit()`` does a caller write the row that
points at the object; if writing the row fails, it deletes the object.

Reads are chunk iterators, so a 2 GiB blob never sits in memory.

Selected by settings: ``BACKUP_STORAGE_URL`` empty → a folder under ``MEDIA_ROOT``;
``s3://bucket/prefix`` → that bucket through django-storages/boto3, with the endpoint and
keys from ``BACKUP_S3_*`` (any S3-compatible server).
"""

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

CHUNK = 1024 * 1024


class StorageError(Exception):
    """The store could not do what was asked (missing object, backend failure)."""


class BlobWriter:
    """A temporary object being written; becomes the object at ``key`` on commit."""

    key: str

    def write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Throw the temporary object away; safe to call twice and after a failure."""
        raise NotImplementedError


class BlobStore:
    """What the backups need from a store. Keys are relative, '/'-separated."""

    name = "abstract"

    def writer(self, key: str) -> BlobWriter:
        raise NotImplementedError

    def read(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        raise NotImplementedError

    def size(self, key: str) -> int | None:
        """The object's size, or None if there is no such object."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Delete the object if it exists."""
        raise NotImplementedError

    def listing(self, prefix: str = "") -> Iterator[tuple[str, dt.datetime]]:
        """Committed objects under ``prefix``, each with when it was last written (UTC)."""
        raise NotImplementedError

    def keys(self, prefix: str = "") -> list[str]:
        """Committed objects under ``prefix``."""
        return sorted(key for key, _ in self.listing(prefix))

    def pending(self) -> list[str]:
        """Temporary objects not yet committed or aborted."""
        raise NotImplementedError

    def pending_abort(self, *, idle_since: dt.datetime, dry_run: bool = False) -> list[str]:
        """Throw away temporary objects not written to since ``idle_since`` (a writer that
        died: its process killed, its machine gone); returns their names. ``dry_run`` only
        names them."""
        raise NotImplementedError

    def put_file(self, key: str, path: Path, chunk_size: int = CHUNK) -> None:
        writer = self.writer(key)
        try:
            with path.open("rb") as handle:
                while chunk := handle.read(chunk_size):
                    writer.write(chunk)
            writer.commit()
        except BaseException:
            writer.abort()
            raise


# --- Local folder ----------------------------------------------------------------------------


class _LocalWriter(BlobWriter):
    def __init__(self, store: "LocalStore", key: str):
        self.key = key
        self.final = store.path(key)
        self.temp = store.root / ".tmp" / f"{uuid.uuid4().hex}.part"
        try:
            self.handle = self.temp.open("xb")
        except FileNotFoundError:  # the store's first write: no folder yet
            self.temp.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.temp.open("xb")
        self.fsync = store.fsync
        self.done = False

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)

    def commit(self) -> None:
        self.handle.flush()
        if self.fsync:
            os.fsync(self.handle.fileno())
        self.handle.close()
        try:
            os.replace(self.temp, self.final)
        except FileNotFoundError:  # the first object under this folder
            self.final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.temp, self.final)
        self.done = True

    def abort(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        self.temp.unlink(missing_ok=True)
        if self.done:
            self.final.unlink(missing_ok=True)


class LocalStore(BlobStore):
    """A folder; a temporary object is a ``.part`` file renamed into place on commit."""

    name = "local"

    def __init__(self, root: Path, *, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self._resolved: Path | None = None

    def path(self, key: str) -> Path:
        # The root is resolved once (each resolve is a system call per path part, paid by
        # every upload); the key's own path is still resolved every time.
        if self._resolved is None:
            self._resolved = self.root.resolve()
        path = (self.root / key).resolve()
        if not path.is_relative_to(self._resolved) or key.startswith(".tmp"):
            raise StorageError(f"Key {key!r} is outside the store.")
        return path

    def writer(self, key: str) -> BlobWriter:
        return _LocalWriter(self, key)

    def read(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            handle = self.path(key).open("rb")
        except FileNotFoundError:
            raise StorageError(f"No stored object {key!r}.") from None
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def listing(self, prefix: str = "") -> Iterator[tuple[str, dt.datetime]]:
        if not self.root.exists():
            return
        for path in self.root.rglob("*"):
            relative = path.relative_to(self.root).as_posix()
            if relative.startswith(".tmp/") or not relative.startswith(prefix):
                continue
            try:
                if path.is_file():
                    yield relative, _mtime(path)
            except FileNotFoundError:  # deleted while listing
                continue

    def pending(self) -> list[str]:
        temp = self.root / ".tmp"
        return sorted(p.name for p in temp.glob("*.part")) if temp.exists() else []

    def pending_abort(self, *, idle_since: dt.datetime, dry_run: bool = False) -> list[str]:
        temp = self.root / ".tmp"
        aborted = []
        for path in sorted(temp.glob("*.part")) if temp.exists() else []:
            try:
                if _mtime(path) < idle_since:
                    if not dry_run:
                        path.unlink()
                    aborted.append(path.name)
            except FileNotFoundError:  # committed or aborted meanwhile
                continue
        return aborted


def _mtime(path: Path) -> dt.datetime:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)


# --- S3-compatible bucket --------------------------------------------------------------------


class _S3Writer(BlobWriter):
    """A multipart upload: parts of ``part_size`` bytes, buffered one at a time."""

    def __init__(self, store: "S3Store", key: str):
        self.key = key
        self.store = store
        self.object = store.bucket.Object(store.full_key(key))
        self.upload = self.object.initiate_multipart_upload()
        self.buffer = bytearray()
        self.parts: list[dict] = []
        self.done = False
        self.aborted = False

    def _flush(self) -> None:
        number = len(self.parts) + 1
        answer = self.upload.Part(number).upload(Body=bytes(self.buffer))
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self.buffer.clear()

    def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        if len(self.buffer) >= self.store.part_size:
            self._flush()

    def commit(self) -> None:
        # The last part may be small (or the only one, even empty).
        if self.buffer or not self.parts:
            self._flush()
        self.upload.complete(MultipartUpload={"Parts": self.parts})
        self.done = True

    def abort(self) -> None:
        self.buffer = bytearray()
        if self.done:
            self.object.delete()
            return
        if not self.aborted:
            self.aborted = True
            self.upload.abort()


class S3Store(BlobStore):
    """A bucket (and key prefix) reached through django-storages' S3Storage and boto3."""

    name = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        part_size: int = 8 * 1024 * 1024,
    ):
        from storages.backends.s3 import S3Storage

        self.storage = S3Storage(
            bucket_name=bucket,
            endpoint_url=endpoint_url or None,
            access_key=access_key or None,
            secret_key=secret_key or None,
            region_name=region or None,
            file_overwrite=True,
        )
        self.prefix = prefix.strip("/")
        # S3 refuses parts under 5 MiB except the last one.
        self.part_size = max(part_size, 5 * 1024 * 1024)

    @property
    def bucket(self):
        return self.storage.bucket

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def writer(self, key: str) -> BlobWriter:
        return _S3Writer(self, key)

    def read(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.bucket.Object(self.full_key(key)).get()["Body"]
        except ClientError as error:
            raise StorageError(f"No stored object {key!r}: {error}") from None
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return self.bucket.Object(self.full_key(key)).content_length
        except ClientError:
            return None

    def delete(self, key: str) -> None:
        self.bucket.Object(self.full_key(key)).delete()

    def listing(self, prefix: str = "") -> Iterator[tuple[str, dt.datetime]]:
        full = self.full_key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        for summary in self.bucket.objects.filter(Prefix=full):
            yield self._relative(summary.key), summary.last_modified

    def _uploads(self):
        for upload in self.bucket.multipart_uploads.all():
            if not self.prefix or upload.object_key.startswith(self.prefix + "/"):
                yield upload

    def pending(self) -> list[str]:
        return sorted(self._relative(u.object_key) for u in self._uploads())

    def pending_abort(self, *, idle_since: dt.datetime, dry_run: bool = False) -> list[str]:
        # S3 says when a multipart upload began, not when its last part came: a part is
        # at most a few MiB, so an upload begun before ``idle_since`` (hours ago) and not
        # completed is one whose writer is gone.
        aborted = []
        for upload in list(self._uploads()):
            if upload.initiated < idle_since:
                if not dry_run:
                    upload.abort()
                aborted.append(self._relative(upload.object_key))
        return sorted(aborted)


# --- Selection -------------------------------------------------------------------------------


def store_from_settings() -> BlobStore:
    url = settings.BACKUP_STORAGE_URL
    if not url:
        return LocalStore(Path(settings.BACKUP_LOCAL_ROOT), fsync=settings.BACKUP_LOCAL_FSYNC)
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise StorageError("BACKUP_STORAGE_URL must be empty (local folder) or s3://bucket/prefix.")
    return S3Store(
        bucket=parts.netloc,
        prefix=parts.path,
        endpoint_url=settings.BACKUP_S3_ENDPOINT_URL,
        access_key=settings.BACKUP_S3_ACCESS_KEY_ID,
        secret_key=settings.BACKUP_S3_SECRET_ACCESS_KEY,
        region=settings.BACKUP_S3_REGION,
        part_size=settings.BACKUP_S3_PART_BYTES,
    )


@lru_cache(maxsize=8)
def _cached(
    url: str, root: str, fsync: bool, endpoint: str, key: str, secret: str, region: str, part: int
) -> BlobStore:
    return store_from_settings()


def get_store() -> BlobStore:
    """The configured store, built once per configuration (tests switch settings)."""
    return _cached(
        settings.BACKUP_STORAGE_URL,
        str(settings.BACKUP_LOCAL_ROOT),
        settings.BACKUP_LOCAL_FSYNC,
        settings.BACKUP_S3_ENDPOINT_URL,
        settings.BACKUP_S3_ACCESS_KEY_ID,
        settings.BACKUP_S3_SECRET_ACCESS_KEY,
        settings.BACKUP_S3_REGION,
        settings.BACKUP_S3_PART_BYTES,
    )
