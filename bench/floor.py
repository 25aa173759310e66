"""Floors for the ingest benchmark: the least work each collect endpoint cannot avoid.

Served only by the benchmark's gunicorn (``bench/settings.py`` points ``ROOT_URLCONF``
here); the product never routes to them. Each does a strict subset of what the real
endpoint does, on the same server, through the same middleware, so its req/s ÷ bare is
the best ratio the real endpoint could reach on this machine:

- ``POST /bench/floor/update``: the heartbeat's database write and nothing else: one
  single-row UPDATE of ``last_heartbeat_at`` (rotating over the seeded systems) and its
  commit; no credentials read, no digest, no response envelope.
- ``POST /bench/floor/store``: the inventory's unavoidable part: read the ~50 KB body and
  store it as it came, in one INSERT and its commit; no authentication, no JSON parsing,
  no history, no diff.
- ``POST /bench/floor/backup``: a cluster backup's unavoidable part: read the body in
  the upload's chunks, hash it, write it to a file under ``BACKUP_LOCAL_ROOT`` and fsync
  it; no authentication, no quota, no row. The file is removed once synced, so a wave
  of floors does not fill the disk (the unlink is not timed apart: it is cheap).
"""

import hashlib
import itertools
import os
import uuid

from django.conf import settings
from django.http import HttpResponse
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from controlplane.urls import urlpatterns as product_urlpatterns
from fleet_app.db import bound_cursor
from fleet_app.models import System

FLOOR_TABLE = "bench_floor_store"
_ids: list[int] = []
_turn = itertools.count()


def _next_system_id() -> int:
    if not _ids:
        _ids.extend(System.objects.order_by("pk").values_list("pk", flat=True))
    return _ids[next(_turn) % len(_ids)]


@csrf_exempt
def floor_update(request):
    # The heartbeat's own cursor (parameters bound by the server), so the floor is not
    # slower than the heartbeat for a reason of its own.
    with bound_cursor() as cursor:
        cursor.execute(
            f"UPDATE {System._meta.db_table} SET last_heartbeat_at = %s WHERE id = %s",  # noqa: S608
            [timezone.now(), _next_system_id()],
        )
    return HttpResponse(b"ok", content_type="text/plain")


@csrf_exempt
def floor_store(request):
    body = request.read()
    with bound_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {FLOOR_TABLE} (received_at, body) VALUES (%s, %s)",  # noqa: S608
            [timezone.now(), body],
        )
    return HttpResponse(b"ok", status=202, content_type="text/plain")


@csrf_exempt
def floor_backup(request):
    size = int(request.META.get("CONTENT_LENGTH") or 0)
    chunk = settings.CLUSTER_BACKUP_CHUNK_BYTES
    folder = settings.BACKUP_LOCAL_ROOT / "floor"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / uuid.uuid4().hex
    digest, received = hashlib.sha256(), 0
    with target.open("xb") as handle:
        while received < size:
            data = request.read(min(chunk, size - received))
            if not data:
                break
            received += len(data)
            digest.update(data)
            handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    target.unlink()
    return HttpResponse(
        f'{{"code": 201, "data": {{"size": {received}, "sha256": "{digest.hexdigest()}"}}}}',
        status=201,
        content_type="application/json",
    )


urlpatterns = [
    path("bench/floor/update", floor_update),
    path("bench/floor/store", floor_store),
    path("bench/floor/backup", floor_backup),
    *product_urlpatterns,
]
