"""Fleet housekeeping tasks (thin wrappers around services)."""

from celery import shared_task
from django.conf import settings

from . import runs, services, tokens


@shared_task(acks_late=True)
def fleet_prune_history() -> dict[str, int]:
    return services.fleet_prune_history(days=settings.FLEET_HISTORY_DAYS)


@shared_task(acks_late=True)
def runs_reap() -> dict[str, int]:
    return runs.runs_reap()


@shared_task(acks_late=True)
def api_tokens_purge_expired() -> int:
    return tokens.api_tokens_purge_expired()


@shared_task(acks_late=True, bind=True)
def inventory_inbox_drain(self) -> dict[str, int]:
    """Drain the inventory inbox for up to a minute; sent by the collect API while
    inventories arrive and by beat's sweep. Two at once share the work (SKIP LOCKED).

    On a worker it lingers for one nudge interval once the inbox is empty (see
    services.inventory_inbox_drain); run in-process (the embedded default, one call per
    accepted inventory) it returns as soon as the inbox is empty."""
    linger = 0.0 if self.request.is_eager else settings.INVENTORY_INBOX_NUDGE_SECONDS
    drained = services.inventory_inbox_drain(seconds=60, linger=linger)
    return {"processed": drained.processed, "failed": drained.failed}
