"""The heartbeat fast path: one UPDATE per heartbeat, guarded by the database.

Every system calls home every ten minutes, so the heartbeat is most of the traffic. A
worker process remembers, for the systems it served recently, their id and secret
digest. A heartbeat whose secret matches the remembered digest (compared in constant
time, as always) is recorded with a single UPDATE whose WHERE clause re-checks, in the
database, everything authentication checks: the same digest, registered, confirmed,
not suspended, not deleted. If anything changed since (a secret re-issued, a system
suspended), the UPDATE touches no row and the heartbeat takes the full path, which
answers exactly as before. So the memory can be stale, never wrong.
"""

import datetime as dt
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
    if len(_known) >= settings.COLLECT_HOT_SYSTEMS:
        _known.pop(next(iter(_known)))  # oldest entry first: dicts keep insertion order
    last = system.last_heartbeat_at
    _known[system.system_key] = _Known(system.pk, system.secret_digest, last and last.date())


def forget_all() -> None:
    _known.clear()


_UPDATE = (
    f"UPDATE {System._meta.db_table} SET last_heartbeat_at = %s"  # noqa: S608
    " WHERE id = %s AND secret_digest = %s AND registered_at IS NOT NULL"
    " AND secret_confirmed_at IS NOT NULL AND suspended_at IS NULL AND deleted_at IS NULL"
)


def heartbeat(system_key: str, system_secret: str) -> dt.datetime | None:
    """Record a heartbeat on the fast path; None means "take the full path"."""
    known = _known.get(system_key)
    # A key this process does not remember is digested too (against a dummy), so every
    # heartbeat that fails here has done one digest before the full path does its own.
    valid = credentials.verify(system_secret, known.digest if known else None)
    if known is None or not valid:
        return None
    now = timezone.now()
    with bound_cursor() as cursor:
        cursor.execute(
            _UPDATE, [connection.ops.adapt_datetimefield_value(now), known.pk, known.digest]
        )
        recorded = cursor.rowcount == 1
    if not recorded:
        _known.pop(system_key, None)
        return None
    if known.day != now.date():
        SystemActivityDay.objects.bulk_create(
            [SystemActivityDay(system_id=known.pk, day=now.date())], ignore_conflicts=True
        )
        known.day = now.date()
    return now
