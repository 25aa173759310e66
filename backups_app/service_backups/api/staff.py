"""The service backups staff API under /api/backups/: services, backup runs, restore runs.

Service backups and restores are Cutover's own (its database, its folders): the
platform's alone (the permission table). Starting a run answers 202 with the run's URL;
the run row is the status.
"""

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from fleet_app.api.pagination import NewestFirst
from fleet_app.errors import FleetError

from .. import restore, selectors, services
from ..models import BackupRun, RestoreRun, Service
from . import serializers


class ByName(NewestFirst):
    """Services in name order (a name is unique)."""

    ordering = "name"


def _invalid(error: FleetError) -> ValidationError:
    return ValidationError({"detail": error.message})


class ServiceViewSet(viewsets.ReadOnlyModelViewSet):
    """Backed-up services with their drill status."""

    serializer_class = serializers.ServiceSerializer
    queryset = Service.objects.all()
    lookup_field = "name"
    pagination_class = ByName

    @extend_schema(responses=serializers.ServiceOverviewSerializer(many=True))
    @action(detail=False, methods=["get"], pagination_class=None)
    def overview(self, request):
        rows = selectors.services_overview()
        return Response(
            [
                {
                    "service": row["service"].name,
                    "last_backup": row["last_backup"].pk if row["last_backup"] else None,
                    "last_drill": row["last_drill"].pk if row["last_drill"] else None,
                    "last_good_drill_at": row["last_good_drill_at"],
                    "drill_overdue": row["drill_overdue"],
                }
                for row in rows
            ]
        )


class BackupRunViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Backup runs; POST ``{"service": name}`` starts one and answers 202."""

    serializer_class = serializers.BackupRunSerializer
    pagination_class = NewestFirst
    queryset = BackupRun.objects.select_related("service")
    filterset_fields = ["service", "state"]

    @extend_schema(
        request=serializers.BackupRunCreateSerializer,
        responses={202: serializers.BackupRunSerializer},
    )
    def create(self, request, *args, **kwargs):
        form = serializers.BackupRunCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            run = services.backup_run_start(
                actor=request.user, service=form.validated_data["service"]
            )
        except FleetError as error:
            raise _invalid(error) from None
        return _accepted(request, run, "backup-run-detail", serializers.BackupRunSerializer)


class RestoreRunViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Restore runs and drills. POST ``{"backup", "target", "dry_run"}``: a dry run
    (the default) answers 200 with the plan; a real restore answers 202."""

    serializer_class = serializers.RestoreRunSerializer
    pagination_class = NewestFirst
    queryset = RestoreRun.objects.select_related("service")
    filterset_fields = ["service", "state", "purpose"]

    @extend_schema(
        request=serializers.RestoreRunCreateSerializer,
        responses={200: serializers.RestoreRunSerializer, 202: serializers.RestoreRunSerializer},
    )
    def create(self, request, *args, **kwargs):
        form = serializers.RestoreRunCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            run = restore.restore_run_start(
                actor=request.user,
                backup=form.validated_data["backup"],
                target=form.validated_data["target"] or None,
                dry_run=form.validated_data["dry_run"],
            )
        except FleetError as error:
            raise _invalid(error) from None
        if run.dry_run:
            return Response(serializers.RestoreRunSerializer(run).data, status=status.HTTP_200_OK)
        return _accepted(request, run, "restore-run-detail", serializers.RestoreRunSerializer)


def _accepted(request, run, route: str, serializer) -> Response:
    url = request.build_absolute_uri(reverse(route, args=[run.pk]))
    data = {**serializer(run).data, "url": url}
    return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": url})
