"""Cluster backups: receive (streamed), list, read (verified), delete, prune, quota.

Receiving is the one long write: the body is streamed from the request into a temporary
object in chunks, hashed on the way, and only when every declared byte has arrived and
the object is committed is the row written (with the quota check, under the
organization's quota row lock). Any failure on the way aborts the temporary object, and
a failure after the commit deletes the object: a short or broken upload leaves no row
and no object. Slow I/O never runs inside a transaction.
"""

import datetime as dt
import hashlib
import logging
import queue
import re
import threading
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from fleet_app import runs as fleet_runs
from fleet_app import services as fleet
from fleet_app.errors import InvalidInput, PayloadTooLarge, ServiceUnavailable, TooManyRequests
from fleet_app.models import Organization, Quota, System, User

from ..errors import BackupCorrupt, LengthRequired, NotFound, StorageUnavailable
from ..storage import StorageError, get_store
from . import throttle
from .models import ClusterBackup

logger = logging.getLogger(__name__)

DEFAULT_MIMETYPE = "application/octet-stream"
# Bodies a client sends by mistake (curl -F): the stored bytes would not be the backup.
REFUSED_CONTENT_TYPES = ("multipart/form-data",)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MIMETYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}$"
)


def _lock_key(name: str) -> int:
    # A signed 64-bit key derived from the name, as pg_advisory_xact_lock takes it.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _xact_lock(name: str) -> None:
    """Block until the transaction-scoped lock ``name`` is ours (PostgreSQL).

    Released at commit or rollback. SQLite serializes writing transactions anyway.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(name)])


# --- Input cleaning --------------------------------------------------------------------------


def filename_clean(raw: str | None, *, now=None) -> str:
    """A safe file name from ``X-Filename``: its last path part, in a small alphabet.

    ``../../etc/passwd`` becomes ``passwd``; nothing left (or nothing given) becomes
    ``backup-YYYYmmdd-HHMMSS.bin``.
    """
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    name = _UNSAFE.sub("_", name).strip("._-")[:128]
    if not name:
        name = f"backup-{(now or timezone.now()):%Y%m%d-%H%M%S}.bin"
    return name


def mimetype_clean(content_type: str | None) -> str:
    """The declared media type if it names a file type; form encodings are not one."""
    value = (content_type or "").split(";", 1)[0].strip().lower()
    if not value or value == "application/x-www-form-urlencoded" or not _MIMETYPE.match(value):
        # curl --data-binary sends x-www-form-urlencoded unless told otherwise.
        return DEFAULT_MIMETYPE
    return value


def content_length_parse(raw: str | None) -> int:
    """``Content-Length`` as a number: missing → 411, malformed or zero → 400."""
    if raw is None or raw == "":
        raise LengthRequired("Content-Length is required: send the backup as the raw request body.")
    if not raw.isdigit():
        raise InvalidInput("Content-Length must be a whole number of bytes.")
    size = int(raw)
    if size == 0:
        raise InvalidInput("The backup is empty.")
    return size


# --- Quota -----------------------------------------------------------------------------------


def _quota_table() -> str:
    return Quota._meta.db_table


def quota_usage(organization_id: int) -> tuple[int, int]:
    """(stored usage, effective limit) of an organization's backup storage."""
    # One short statement: read before every upload's body, at the fleet's nightly rate.
    with connection.cursor() as cursor:
        cursor.execute(
            f'SELECT usage, "limit" FROM {_quota_table()} '  # noqa: S608
            "WHERE organization_id = %s AND resource = %s",
            [organization_id, Quota.Resource.BACKUP_BYTES],
        )
        row = cursor.fetchone()
    default = settings.FLEET_QUOTA_DEFAULTS[Quota.Resource.BACKUP_BYTES]
    if row is None:
        return 0, default
    usage, limit = row
    return usage, default if limit is None else limit


def _quota_locked(organization_id: int) -> Quota:
    """The organization's backup_bytes quota row, created with the default limit, locked."""
    Quota.objects.get_or_create(
        organization_id=organization_id, resource=Quota.Resource.BACKUP_BYTES
    )
    return Quota.objects.select_for_update().get(
        organization_id=organization_id, resource=Quota.Resource.BACKUP_BYTES
    )


def _quota_take(organization_id: int, size: int) -> bool:
    """Add ``size`` to the organization's usage if it fits under the limit; whether it did.

    One conditional UPDATE: it takes the quota row's lock until the transaction ends, so
    the organization's uploads commit one after the other and two cannot both fit in the
    last free bytes. No row (the organization's first backup): none is taken.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {_quota_table()} SET usage = usage + %s, updated_at = %s "  # noqa: S608
            'WHERE organization_id = %s AND resource = %s AND usage + %s <= COALESCE("limit", %s)',
            [
                size,
                timezone.now(),
                organization_id,
                Quota.Resource.BACKUP_BYTES,
                size,
                settings.FLEET_QUOTA_DEFAULTS[Quota.Resource.BACKUP_BYTES],
            ],
        )
        return cursor.rowcount == 1


def _quota_refuse(used: int, limit: int, size: int) -> None:
    if used + size > limit:
        raise PayloadTooLarge(
            f"The organization's backup storage quota is full: {used} of {limit} bytes used, "
            f"this backup needs {size} more."
        )


def backup_bytes_per_organization() -> dict[int, int]:
    """The real usage (bytes stored) of every organization that stores backups."""
    return dict(
        ClusterBackup.objects.order_by()
        .values_list("organization_id")
        .annotate(total=Sum("size"))
        .values_list("organization_id", "total")
    )


# --- Receive ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """What the view parsed from the request; ``read(n)`` returns up to n body bytes."""

    read: Callable[[int], bytes]
    content_length: str | None
    content_type: str | None
    filename: str | None


def cluster_backup_receive(*, system: System, upload: Upload) -> ClusterBackup:
    """Store one backup a system sends, or raise with the status to answer.

    Order: rate (429), Content-Length (411/400), media type (400), size cap (413), a
    free upload slot of this process (503 with Retry-After), quota (413), then the body.
    """
    wait = throttle.upload_allow(system_key=system.system_key)
    if wait:
        raise TooManyRequests(
            "Too many backups from this system; try again later.", retry_after=wait
        )
    size = content_length_parse(upload.content_length)
    media = (upload.content_type or "").split(";", 1)[0].strip().lower()
    if media in REFUSED_CONTENT_TYPES:
        raise InvalidInput(
            "Send the backup file as the raw request body (curl --data-binary @file), "
            "not as a form."
        )
    cap = settings.CLUSTER_BACKUP_MAX_BYTES
    if size > cap:
        raise PayloadTooLarge(f"The backup is larger than the {cap}-byte limit.")
    release = throttle.upload_slot_take()
    if release is None:
        _drain(upload, size)
        raise ServiceUnavailable(
            "The server is busy storing other backups; try again later.",
            retry_after=throttle.busy_retry_after(),
        )
    try:
        backup = _receive(system=system, upload=upload, size=size)
    finally:
        release()
    # Retention runs off the request path: the nightly wave of uploads pays only for its
    # own row (the embedded default prunes in-process once the row is committed).
    fleet_runs.task_nudge(PRUNE_TASK, every=settings.CLUSTER_BACKUP_PRUNE_NUDGE_SECONDS)
    return backup


# A refused body up to this size is read and dropped, so the client reads the refusal
# instead of a reset connection (closing a socket with unread bytes resets it).
DRAIN_MAX_BYTES = 8 * 1024 * 1024


def _drain(upload: Upload, size: int) -> None:
    left = size if size <= DRAIN_MAX_BYTES else 0
    chunk_size = settings.CLUSTER_BACKUP_CHUNK_BYTES
    try:
        while left > 0 and (chunk := upload.read(min(chunk_size, left))):
            left -= len(chunk)
    except OSError:
        pass  # the client went away: the refusal is all there is to say anyway


def _receive(*, system: System, upload: Upload, size: int) -> ClusterBackup:
    used, limit = quota_usage(system.organization_id)
    _quota_refuse(used, limit, size)

    backup_id = uuid.uuid4()
    key = f"cluster/{system.system_key}/{backup_id}"
    chunk_size = settings.CLUSTER_BACKUP_CHUNK_BYTES
    try:
        writer = get_store().writer(key)
    except Exception as error:
        raise StorageUnavailable(f"The backup storage is unavailable: {error}") from error
    # A body of a few chunks is hashed and written as it is read: a thread to overlap
    # the two would cost more than it saves.
    sink: _Sink | _InlineSink = (
        _InlineSink(writer) if size <= _Sink.INLINE_CHUNKS * chunk_size else _Sink(writer)
    )
    received = 0
    try:
        while received < size:
            try:
                chunk = upload.read(min(chunk_size, size - received))
            except OSError as error:  # Django's UnreadablePostError is an OSError
                raise InvalidInput(
                    f"The upload broke after {received} of {size} bytes: {error}"
                ) from None
            if not chunk:
                raise InvalidInput(f"The upload ended after {received} of {size} bytes.")
            sink.put(chunk)
            received += len(chunk)
        sha256 = sink.finish()
        try:
            writer.commit()
        except Exception as error:
            raise StorageUnavailable(f"The backup could not be stored: {error}") from error
        return _cluster_backup_commit(
            system=system,
            backup_id=backup_id,
            key=key,
            size=size,
            sha256=sha256,
            filename=filename_clean(upload.filename),
            mimetype=mimetype_clean(upload.content_type),
        )
    except BaseException:
        sink.stop()
        try:
            writer.abort()
        except Exception:
            logger.exception("could not remove the partial backup object %s", key)
        raise


class _InlineSink:
    """Hashes and stores each chunk in the request thread, as it is read."""

    def __init__(self, writer):
        self.writer = writer
        self.digest = hashlib.sha256()

    def put(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        try:
            self.writer.write(chunk)
        except Exception as error:
            raise StorageUnavailable(f"The backup could not be stored: {error}") from error

    def finish(self) -> str:
        return self.digest.hexdigest()

    def stop(self) -> None:
        return None


class _Sink(threading.Thread):
    """Hashes and stores the chunks the request thread reads, alongside it.

    Reading the socket (gunicorn's parser, Python copies) and hashing plus writing
    (which release the GIL) then use two cores instead of one, in turn. The queue holds
    at most ``DEPTH`` chunks, so memory stays a few chunks whatever the body size.
    """

    DEPTH = 2
    # Bodies of at most this many chunks take _InlineSink instead.
    INLINE_CHUNKS = 4

    def __init__(self, writer):
        super().__init__(name="cluster-backup-sink", daemon=True)
        self.writer = writer
        self.digest = hashlib.sha256()
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=self.DEPTH)
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        while (chunk := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain what the reader still hands over
            try:
                self.digest.update(chunk)
                self.writer.write(chunk)
            except BaseException as error:
                self.error = error

    def _raise(self) -> None:
        if self.error is not None:
            raise StorageUnavailable(
                f"The backup could not be stored: {self.error}"
            ) from self.error

    def put(self, chunk: bytes) -> None:
        self._raise()
        self.queue.put(chunk)

    def finish(self) -> str:
        """Wait for every chunk to be written; the SHA-256 of them all."""
        self.queue.put(None)
        self.join()
        self._raise()
        return self.digest.hexdigest()

    def stop(self) -> None:
        if self.is_alive():
            self.queue.put(None)
            self.join()


def _cluster_backup_commit(
    *,
    system: System,
    backup_id: uuid.UUID,
    key: str,
    size: int,
    sha256: str,
    filename: str,
    mimetype: str,
) -> ClusterBackup:
    with transaction.atomic():
        if not _quota_take(system.organization_id, size):
            # No quota row yet, or no room: under the row's lock (made with the default
            # limit if missing), check again; still no room is a 413.
            quota = _quota_locked(system.organization_id)
            _quota_refuse(quota.usage, quota.effective_limit, size)
            Quota.objects.filter(pk=quota.pk).update(
                usage=F("usage") + size, updated_at=timezone.now()
            )
        backup = ClusterBackup.objects.create(
            id=backup_id,
            system_id=system.pk,
            organization_id=system.organization_id,
            filename=filename,
            mimetype=mimetype,
            size=size,
            sha256=sha256,
            storage_key=key,
        )
    return backup


# --- Retention -------------------------------------------------------------------------------


def _retention_split(rows: list[ClusterBackup], keep_count: int, keep_bytes: int):
    """Newest first: keep while both limits hold (the newest always), drop the rest."""
    kept, total = 0, 0
    for index, row in enumerate(rows):
        if index > 0 and (kept + 1 > keep_count or total + row.size > keep_bytes):
            return rows[index:]
        kept, total = kept + 1, total + row.size
    return []


def cluster_backups_prune(
    *, system_id: int, keep_count: int | None = None, keep_bytes: int | None = None
) -> list[ClusterBackup]:
    """Delete a system's oldest backups beyond N backups or S bytes; the newest stays.

    Under a per-system transaction lock, so two uploads finishing together prune from
    the same, complete list one after the other. Objects are deleted after the commit.
    """
    keep_count = settings.CLUSTER_BACKUP_KEEP_COUNT if keep_count is None else keep_count
    keep_bytes = settings.CLUSTER_BACKUP_KEEP_BYTES if keep_bytes is None else keep_bytes
    with transaction.atomic():
        _xact_lock(f"cluster-backup-retention:{system_id}")
        rows = list(
            ClusterBackup.objects.filter(system_id=system_id).order_by("-uploaded_at", "-pk")
        )
        dropped = _retention_split(rows, keep_count, keep_bytes)
        for backup in dropped:
            _row_delete(
                backup,
                actor=None,
                action="cluster_backup.prune",
                after={"reason": f"retention: keep {keep_count} backups / {keep_bytes} bytes"},
            )
    return dropped


PRUNE_TASK = "backups_app.cluster_backups.tasks.cluster_backups_prune_recent"


def cluster_backups_prune_recent(*, since: dt.datetime | None = None) -> int:
    """Apply retention to the systems that uploaded since ``since`` (by default within
    ``CLUSTER_BACKUP_PRUNE_LOOKBACK_SECONDS``) and hold more than they may keep; how many
    backups it deleted.

    One query finds them (the uploads since, by ``uploaded_at``; their counts and sizes,
    by system); only those are then pruned, each under its own lock. Sent after uploads
    and swept by beat, so a nudge lost with the broker is made up for.
    """
    since = since or timezone.now() - dt.timedelta(
        seconds=settings.CLUSTER_BACKUP_PRUNE_LOOKBACK_SECONDS
    )
    keep_count = settings.CLUSTER_BACKUP_KEEP_COUNT
    keep_bytes = settings.CLUSTER_BACKUP_KEEP_BYTES
    over = (
        ClusterBackup.objects.filter(
            system_id__in=ClusterBackup.objects.filter(uploaded_at__gte=since).values("system_id")
        )
        .values("system_id")
        .annotate(count=Count("pk"), bytes=Sum("size"))
        .filter(Q(count__gt=keep_count) | Q(bytes__gt=keep_bytes))
        .values_list("system_id", flat=True)
    )
    return sum(len(cluster_backups_prune(system_id=system_id)) for system_id in list(over))


# --- Delete ----------------------------------------------------------------------------------


def _row_delete(backup: ClusterBackup, *, actor: User | None, action: str, after: dict) -> None:
    """Delete the row, give its bytes back to the quota, audit; the object after commit."""
    deleted, _ = ClusterBackup.objects.filter(pk=backup.pk).delete()
    if not deleted:
        return
    Quota.objects.filter(
        organization_id=backup.organization_id, resource=Quota.Resource.BACKUP_BYTES
    ).update(usage=F("usage") - backup.size, updated_at=timezone.now())
    fleet.audit_record(
        actor=actor,
        action=action,
        obj=backup,
        before=fleet.audit_snapshot(backup),
        after=after,
        organization=Organization(pk=backup.organization_id),
    )
    key = backup.storage_key
    transaction.on_commit(lambda: _object_delete(key))


def _object_delete(key: str) -> None:
    try:
        get_store().delete(key)
    except Exception:
        # The row is gone; an orphan object costs space, not correctness.
        logger.exception("could not delete stored backup object %s", key)


def cluster_backup_delete(
    *, backup: ClusterBackup, actor: User | None = None, system: System | None = None
) -> None:
    """Delete a backup on behalf of staff (``actor``) or of the system that owns it."""
    with transaction.atomic():
        after = {"deleted_by_system": system.system_key} if system is not None else None
        _row_delete(backup, actor=actor, action="cluster_backup.delete", after=after)


# --- Read ------------------------------------------------------------------------------------


def cluster_backup_get(*, system: System, backup_id) -> ClusterBackup:
    """A system's own backup; someone else's is "not found", not "forbidden"."""
    try:
        backup_id = uuid.UUID(str(backup_id))
    except ValueError:
        raise NotFound("No such backup for this system.") from None
    backup = ClusterBackup.objects.filter(pk=backup_id, system_id=system.pk).first()
    if backup is None:
        raise NotFound("No such backup for this system.")
    return backup


def _corrupt(backup: ClusterBackup, reason: str) -> BackupCorrupt:
    ClusterBackup.objects.filter(pk=backup.pk, corrupt_at__isnull=True).update(
        corrupt_at=timezone.now()
    )
    logger.error("cluster backup %s is corrupt: %s", backup.pk, reason)
    return BackupCorrupt(f"The stored backup {backup.pk} failed its integrity check: {reason}.")


def cluster_backup_open(backup: ClusterBackup) -> Iterator[bytes]:
    """The backup's bytes, verified: size before the first byte, SHA-256 before the last.

    The last chunk is held back until the digest of everything matches, so a corrupt
    object is never served whole: the stream fails before its final bytes and the
    client sees a short body (and its Content-Length tells it so).
    """
    if backup.corrupt_at is not None:
        raise BackupCorrupt(f"The stored backup {backup.pk} failed an earlier integrity check.")
    store = get_store()
    try:
        stored = store.size(backup.storage_key)
    except StorageError as error:
        raise _corrupt(backup, str(error)) from None
    if stored is None:
        raise _corrupt(backup, "the stored object is missing")
    if stored != backup.size:
        raise _corrupt(backup, f"{stored} bytes stored, {backup.size} uploaded")
    return _verified(backup, store.read(backup.storage_key))


def _verified(backup: ClusterBackup, chunks: Iterator[bytes]) -> Iterator[bytes]:
    digest, held, total = hashlib.sha256(), None, 0
    for chunk in chunks:
        digest.update(chunk)
        total += len(chunk)
        if held is not None:
            yield held
        held = chunk
    if total != backup.size or digest.hexdigest() != backup.sha256:
        raise _corrupt(backup, "the SHA-256 of the stored bytes does not match")
    if held is not None:
        yield held
