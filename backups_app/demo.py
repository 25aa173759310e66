"""Demo cluster backups: the upload ``seed_demo_backups`` and the live demo fleet share.

A demo backup is a few kilobytes of bytes derived from the system and its number, sent
through the same service as a real upload (stored, hashed, counted against the quota,
pruned by retention).
"""

import datetime as dt
import io
import random

from django.db.models import Max

from fleet_app.models import System

from .cluster_backups import services
from .cluster_backups.models import ClusterBackup

# Clusters back up nightly.
BACKUP_EVERY = dt.timedelta(days=1)
# Bounds one tick's work (fleet_app/demo_live.py).
BACKUPS_PER_TICK = 20


def demo_backup_upload(system: System, n: int) -> ClusterBackup:
    rng = random.Random(system.pk * 10 + n)  # noqa: S311 - demo content
    body = rng.randbytes(rng.randint(2_000, 16_000))
    return services.cluster_backup_receive(
        system=system,
        upload=services.Upload(
            read=io.BytesIO(body).read,
            content_length=str(len(body)),
            content_type="application/octet-stream",
            filename=f"{system.name}-backup.json.gz.gpg",
        ),
    )


def demo_backups_due(*, system_ids: list[int], now: dt.datetime) -> int:
    """The nightly backup of the live demo systems that back up: those whose latest
    backup is older than a day (a system that never sent one goes on not sending)."""
    due = (
        ClusterBackup.objects.filter(system_id__in=system_ids)
        .values("system_id")
        .annotate(latest=Max("uploaded_at"))
        .filter(latest__lt=now - BACKUP_EVERY)
        .order_by("latest")
        .values_list("system_id", flat=True)[:BACKUPS_PER_TICK]
    )
    sent = 0
    for system in System.objects.filter(pk__in=list(due)):
        demo_backup_upload(system, int(now.timestamp()))
        sent += 1
    return sent
