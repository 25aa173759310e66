"""The storage sweep: stored objects no row points at, and uploads nobody will finish.

Writes are ordered so that a failure leaves nothing behind (storage.py), but two cases
still can: an object whose delete failed after its row was gone (the store was down for a
moment), and a temporary object whose writer died with its process (a worker killed in
the middle of a service backup). Neither costs correctness; both cost space, and the
per-organization quota counts rows, not objects, so nobody would ever notice them.

Only Cutover's own prefixes are swept, each against the rows that own its objects, and
only objects older than ``BACKUP_SWEEP_GRACE_HOURS``: an object is committed a moment
before the row that points at it, and a sweep must never race an upload.
"""

import datetime as dt
import itertools
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone

from .cluster_backups import selectors as cluster_selectors
from .service_backups import selectors as service_selectors
from .storage import StorageError, get_store

logger = logging.getLogger(__name__)

BATCH = 500

# Key prefix → which of a batch of its keys rows still point at (each capability answers
# for the prefix it writes under).
OWNERS: dict[str, Callable[[Collection[str]], set[str]]] = {
    "cluster/": cluster_selectors.storage_keys_owned,
    "services/": service_selectors.storage_keys_owned,
}


@dataclass
class SweepResult:
    orphans: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def storage_sweep(
    *, apply: bool, now: dt.datetime | None = None, grace: dt.timedelta | None = None
) -> SweepResult:
    """Find (and with ``apply``, delete) orphan objects and abandoned temporary objects
    older than the grace period."""
    if grace is None:
        grace = dt.timedelta(hours=settings.BACKUP_SWEEP_GRACE_HOURS)
    cutoff = (now or timezone.now()) - grace
    store = get_store()
    result = SweepResult()
    try:
        for prefix, owned in OWNERS.items():
            old = (key for key, modified in store.listing(prefix) if modified < cutoff)
            for batch in itertools.batched(old, BATCH):
                kept = owned(batch)
                result.orphans += [key for key in batch if key not in kept]
        result.unfinished = store.pending_abort(idle_since=cutoff, dry_run=not apply)
    except StorageError:
        raise
    except Exception as error:  # the backend's own (S3 unreachable, access denied)
        raise StorageError(f"{type(error).__name__}: {error}") from error
    if not apply:
        return result
    for key in result.orphans:
        try:
            store.delete(key)
            logger.info("storage sweep: deleted orphan object %s", key)
        except Exception:
            logger.exception("storage sweep: could not delete orphan object %s", key)
            result.failed.append(key)
    for name in result.unfinished:
        logger.info("storage sweep: aborted unfinished upload %s", name)
    return result
