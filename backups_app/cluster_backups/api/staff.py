"""The cluster backups staff API under /api/backups/cluster-backups/: scoped to the
caller's organization subtree like every fleet list; downloads are audited."""

from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from fleet_app import services as fleet
from fleet_app.api.filters import visible_systems
from fleet_app.api.pagination import NewestFirst

from ...errors import BackupCorrupt
from .. import selectors, services
from ..models import ClusterBackup
from . import serializers
from .collect import download_response


class ClusterBackupFilter(filters.FilterSet):
    system = filters.ModelChoiceFilter(queryset=visible_systems, label="System (id)")

    class Meta:
        model = ClusterBackup
        fields = ["system"]


class NewestUploadFirst(NewestFirst):
    ordering = ("-uploaded_at", "-pk")


class ClusterBackupViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Cluster backups of the visible fleet, newest first; ``?system=<id>`` filters."""

    serializer_class = serializers.ClusterBackupSerializer
    pagination_class = NewestUploadFirst
    filterset_class = ClusterBackupFilter

    def get_queryset(self):
        return selectors.cluster_backups_visible_to(self.request.user).select_related("system")

    def perform_destroy(self, instance):
        services.cluster_backup_delete(backup=instance, actor=self.request.user)

    @extend_schema(
        responses={
            (200, "application/octet-stream"): bytes,
            500: OpenApiResponse(
                description="The stored object failed its integrity check: "
                "a fault of the store, not of the request."
            ),
        }
    )
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        backup = self.get_object()
        try:
            response = download_response(backup)
        except BackupCorrupt as error:
            return Response({"detail": error.message}, status=500)
        fleet.audit_record(
            actor=request.user,
            action="cluster_backup.download",
            obj=backup,
            after={"size": backup.size, "sha256": backup.sha256},
            organization=backup.organization,
        )
        return response
