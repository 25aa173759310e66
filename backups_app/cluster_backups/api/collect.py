"""Cluster backups on the collect API: ``{collect_url}/backups`` (Basic auth as the rest).

Plain Django views like the fleet's collect views (curl clients, the collect envelope).
The upload never touches ``request.body``: the view hands ``request.read`` to the
service, which streams the body to storage in chunks.
"""

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse

from fleet_app.api.collect import collect_endpoint, envelope
from fleet_app.models import System

from .. import services
from ..models import ClusterBackup


def backup_data(backup: ClusterBackup) -> dict:
    return {
        "id": str(backup.id),
        "filename": backup.filename,
        "size": backup.size,
        "sha256": backup.sha256,
        "mimetype": backup.mimetype,
        "uploaded_at": backup.uploaded_at,
    }


@collect_endpoint("GET", "POST")
def backups(request: HttpRequest, system: System) -> JsonResponse:
    if request.method == "GET":
        rows = system.cluster_backups.order_by("-uploaded_at", "-pk")
        return envelope(200, "backups", {"backups": [backup_data(b) for b in rows]})
    backup = services.cluster_backup_receive(
        system=system,
        upload=services.Upload(
            read=request.read,
            content_length=request.META.get("CONTENT_LENGTH"),
            content_type=request.META.get("CONTENT_TYPE"),
            filename=request.META.get("HTTP_X_FILENAME"),
        ),
    )
    return envelope(201, "backup stored", backup_data(backup))


def content_disposition(filename: str) -> str:
    # filename_clean keeps names to [A-Za-z0-9._-]: no quoting or encoding needed.
    return f'attachment; filename="{filename}"'


def download_response(backup: ClusterBackup) -> StreamingHttpResponse:
    """The verified byte stream with its length, name and checksum."""
    response = StreamingHttpResponse(
        services.cluster_backup_open(backup), content_type=backup.mimetype
    )
    response["Content-Length"] = str(backup.size)
    response["Content-Disposition"] = content_disposition(backup.filename)
    response["X-Checksum-SHA256"] = backup.sha256
    response["Cache-Control"] = "no-store"
    return response


@collect_endpoint("GET", "DELETE")
def backup(request: HttpRequest, system: System, backup_id) -> StreamingHttpResponse:
    found = services.cluster_backup_get(system=system, backup_id=backup_id)
    if request.method == "DELETE":
        services.cluster_backup_delete(backup=found, system=system)
        return envelope(200, "backup deleted", {"id": str(found.id)})
    return download_response(found)
