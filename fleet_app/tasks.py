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


@shared_task(acks_late=True)
def inventory_inbox_drain() -> dict[str, int]:
    """Drain the inventory inbox for up to a minute; sent by the collect API while
    inventories arrive and by beat's sweep. Two at once share the work (SKIP LOCKED)."""
    drained = services.inventory_inbox_drain(seconds=60)
    return {"processed": drained.processed, "failed": drained.failed}
