"""The heartbeat fast path: one UPDATE per heartbeat, guarded by the database.

Every system calls home every ten minutes, so the heartbeat is most of the traffic. A
worker process remembers, for the systems it served recently, their id and secret
digest. A heartbeat whose secret matches the remembered digest (compared in constant
time, as always) is recorded with a single UPDATE whose WHERE clause re-checks, in the
database, everything authentication checks: the same digest, registered, confirmed,
not suspended, not deleted. If anything changed since (a secret re-issued, a system
suspended), the UPDATE touches no row and the heartbeat takes the full path, which
answers exactly as before. So the memory can be stale, never wrong.

A system the process does not remember (in a fleet of a million, most of them) joins the
group commit by its key: the leader looks all such keys up in one SELECT, compares each
presented secret's digest with the stored one in constant time, here, and writes the
heartbeats that match with the others. One that does not match, or whose system is not
in a state to heartbeat, takes the full path, which gives the precise answer.
"""

import datetime as dt
import hmac
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.utils import timezone

from . import credentials
from .db import bound_cursor
from .models import System, SystemActivityDay


@dataclass
class _Known:
    pk: int
    digest: str
    day: dt.date | None  # the last UTC day this process recorded activity for


_known: dict[str, _Known] = {}


def remember(system: System) -> None:
    """Remember a system that has just authenticated on the full path."""
    last = system.last_heartbeat_at
    _remember(system.system_key, _Known(system.pk, system.secret_digest, last and last.date()))


def _remember(system_key: str, known: _Known) -> None:
    if len(_known) >= settings.COLLECT_HOT_SYSTEMS:
        _known.pop(next(iter(_known)))  # oldest entry first: dicts keep insertion order
    _known[system_key] = known


def forget_all() -> None:
    _known.clear()


def forget(system_key: str) -> None:
    _known.pop(system_key, None)


def remembered(system_key: str, system_secret: str) -> tuple[int, str] | None:
    """``(id, secret digest)`` of a system this process remembers whose secret matches
    (compared in constant time); None otherwise, after the same digest against a dummy.
    What other collect endpoints use as their guard (the inventory's guarded INSERT)."""
    known = _known.get(system_key)
    if not credentials.verify(system_secret, known.digest if known else None):
        return None
    assert known is not None
    return known.pk, known.digest


_UPDATE = (
    f"UPDATE {System._meta.db_table} SET last_heartbeat_at = %s"  # noqa: S608
    " WHERE id = %s AND secret_digest = %s AND registered_at IS NOT NULL"
    " AND secret_confirmed_at IS NOT NULL AND suspended_at IS NULL AND deleted_at IS NULL"
)


def heartbeat(system_key: str, system_secret: str) -> dt.datetime | None:
    """Record a heartbeat on the fast path; None means "take the full path"."""
    known = _known.get(system_key)
    if known is None:
        return _heartbeat_unknown(system_key, system_secret)
    if not credentials.verify(system_secret, known.digest):
        return None
    now = timezone.now()
    recorded = record(known.pk, now, digest=known.digest, new_day=known.day != now.date())
    if not recorded:
        _known.pop(system_key, None)
        return None
    known.day = now.date()
    return now


def _heartbeat_unknown(system_key: str, system_secret: str) -> dt.datetime | None:
    """A system this process does not remember, looked up by the group's leader (with the
    other such systems of the group, in one SELECT) and written with the group. Where
    there is no group (another database, inside a transaction) the full path does it."""
    presented = credentials.digest(system_secret)
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        # Digested against a dummy too: every heartbeat that fails here has done one
        # digest and one comparison before the full path does its own.
        hmac.compare_digest(presented, credentials.DUMMY_DIGEST)
        return None
    entry = _Entry(None, timezone.now(), None, False, key=system_key, presented=presented)
    if not _submit(entry):
        return None
    assert entry.pk is not None and entry.digest is not None
    _remember(system_key, _Known(entry.pk, entry.digest, entry.at.date()))
    return entry.at


# --- Group commit ------------------------------------------------------------------------
#
# One commit per heartbeat caps a process at what the disk can flush one by one. The
# heartbeats that a process's threads are recording at the same moment are written by one
# of them, the leader, in one statement and one commit; each request returns only once
# the statement that carries its row has committed, so a heartbeat answered 200 is
# durable. A heartbeat alone is written at once; one that finds others on their way
# waits up to COLLECT_HEARTBEAT_FLUSH_MS for them.


@dataclass(eq=False)
class _Entry:
    pk: int | None  # None until the leader has looked ``key`` up
    at: dt.datetime
    digest: str | None  # None: the full path authenticated it just now, no guard needed
    new_day: bool
    key: str | None = None  # a system this process does not remember, by its key …
    presented: str | None = None  # … and the digest of the secret it presented
    done: bool = False
    recorded: bool = False
    error: BaseException | None = None


_group = threading.Condition()
_pending: list[_Entry] = []
_flushing = False
_arriving = 0  # heartbeats of this process between their start and their record()


def arriving() -> None:
    """A heartbeat has started (before authentication): the leader may wait for it."""
    global _arriving
    with _group:
        _arriving += 1


def departed() -> None:
    global _arriving
    with _group:
        _arriving -= 1


def record(pk: int, at: dt.datetime, *, digest: str | None, new_day: bool) -> bool:
    """Write ``last_heartbeat_at = at`` for system ``pk`` (guarded by ``digest`` and the
    system's state when given) and its activity day when ``new_day``; True if recorded.

    Returns once the row is committed, alone or with the concurrent heartbeats of this
    process. Inside a transaction (nothing would be durable before it commits) or on a
    database other than PostgreSQL, the row is written at once, alone.
    """
    entry = _Entry(pk, at, digest, new_day)
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        _write([entry])
        return entry.recorded
    return _submit(entry)


def _submit(entry: _Entry) -> bool:
    """Join the group commit: returns once the statement carrying ``entry`` committed."""
    global _flushing
    with _group:
        _pending.append(entry)
        while not entry.done and _flushing:
            _group.wait()
        if entry.done:
            return _result(entry)
        _flushing = True
    # This thread leads: it writes whatever is pending when its window closes.
    try:
        window = settings.COLLECT_HEARTBEAT_FLUSH_MS / 1000
        deadline = time.monotonic() + window
        while window and time.monotonic() < deadline:
            with _group:
                if _arriving <= len(_pending):
                    break  # nobody else is on the way
            time.sleep(0.0005)
        with _group:
            batch = _pending[:]
            _pending.clear()
        try:
            _write(batch)
        except BaseException as error:  # every request of the batch answers the same
            for waiting in batch:
                waiting.error = error
    finally:
        with _group:
            for waiting in batch:
                waiting.done = True
            _flushing = False
            _group.notify_all()
    return _result(entry)


def _result(entry: _Entry) -> bool:
    if entry.error is not None:
        raise entry.error
    return entry.recorded


_table = System._meta.db_table
_days = SystemActivityDay._meta.db_table


def _statement(count: int) -> str:
    """One statement for ``count`` heartbeats: the guarded UPDATE of their systems and the
    INSERT of the activity days that are new, in one round trip and one commit."""
    values = ", ".join(["(%s::bigint, %s::varchar, %s::timestamptz, %s::date)"] * count)
    return (
        f"WITH v(id, digest, at, day) AS (VALUES {values}),"  # noqa: S608
        f" u AS (UPDATE {_table} s SET last_heartbeat_at = v.at FROM v WHERE s.id = v.id"
        " AND (v.digest IS NULL OR (s.secret_digest = v.digest"
        " AND s.registered_at IS NOT NULL AND s.secret_confirmed_at IS NOT NULL"
        " AND s.suspended_at IS NULL AND s.deleted_at IS NULL)) RETURNING s.id),"
        f" d AS (INSERT INTO {_days} (system_id, day) SELECT v.id, v.day FROM v"
        " JOIN u ON u.id = v.id WHERE v.day IS NOT NULL ON CONFLICT DO NOTHING)"
        " SELECT id FROM u"
    )


def _write(batch: list[_Entry]) -> None:
    if connection.vendor != "postgresql":
        for entry in batch:
            _write_portable(entry)
        return
    unknown = [entry for entry in batch if entry.pk is None]
    if unknown:
        _look_up(unknown)
        batch = [entry for entry in batch if entry.pk is not None]
    # A system twice in one batch (two heartbeats at once) is written by two statements:
    # an UPDATE … FROM updates a row once whatever number of values match it.
    while batch:
        now_batch: list[_Entry] = []
        later: list[_Entry] = []
        seen: set[int | None] = set()
        for entry in batch:
            (later if entry.pk in seen else now_batch).append(entry)
            seen.add(entry.pk)
        batch = later
        params: list = []
        for entry in now_batch:
            params += [
                entry.pk,
                entry.digest,
                connection.ops.adapt_datetimefield_value(entry.at),
                entry.at.date() if entry.new_day else None,
            ]
        with bound_cursor() as cursor:
            cursor.execute(_statement(len(now_batch)), params)
            written = {row[0] for row in cursor.fetchall()}
        for entry in now_batch:
            entry.recorded = entry.pk in written


_LOOK_UP = (
    f"SELECT system_key, id, secret_digest, last_heartbeat_at FROM {_table}"  # noqa: S608
    " WHERE system_key = ANY(%s) AND registered_at IS NOT NULL"
    " AND secret_confirmed_at IS NOT NULL AND suspended_at IS NULL AND deleted_at IS NULL"
)


def _look_up(entries: list[_Entry]) -> None:
    """Resolve the entries of systems this process does not remember, in one SELECT:
    those whose presented digest matches the stored one (compared in constant time) get
    their id, and their stored digest as the UPDATE's guard; the others stay unresolved
    and are not written (their heartbeats take the full path)."""
    with bound_cursor() as cursor:
        cursor.execute(_LOOK_UP, [list({entry.key for entry in entries})])
        found = {key: (pk, digest, last) for key, pk, digest, last in cursor.fetchall()}
    for entry in entries:
        pk, digest, last = found.get(entry.key, (None, credentials.DUMMY_DIGEST, None))
        assert entry.presented is not None
        if hmac.compare_digest(entry.presented, digest) and pk is not None:
            entry.pk, entry.digest = pk, digest
            entry.new_day = last is None or last.date() != entry.at.date()


def _write_portable(entry: _Entry) -> None:
    with bound_cursor() as cursor:
        if entry.digest is None:
            cursor.execute(
                f"UPDATE {_table} SET last_heartbeat_at = %s WHERE id = %s",  # noqa: S608
                [connection.ops.adapt_datetimefield_value(entry.at), entry.pk],
            )
        else:
            cursor.execute(
                _UPDATE,
                [connection.ops.adapt_datetimefield_value(entry.at), entry.pk, entry.digest],
            )
        entry.recorded = cursor.rowcount == 1
    if entry.recorded and entry.new_day:
        assert entry.pk is not None  # portable entries always carry their id
        SystemActivityDay.objects.bulk_create(
            [SystemActivityDay(system_id=entry.pk, day=entry.at.date())], ignore_conflicts=True
        )
