"""The staff REST API: list and filter systems, their inventories and changes."""

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from .. import selectors
from . import serializers
from .filters import InventoryChangeFilter, SystemFilter
from .pagination import NewestFirst


class SystemViewSet(viewsets.ReadOnlyModelViewSet):
    """Systems of the caller's organization and everything below it."""

    serializer_class = serializers.SystemSerializer
    filterset_class = SystemFilter
    pagination_class = NewestFirst

    def get_queryset(self):
        return selectors.systems_visible_to(self.request.user).select_related("organization")

    @extend_schema(responses=serializers.InventorySummarySerializer(many=True))
    @action(detail=True, methods=["get"])
    def inventories(self, request, pk=None):
        system = self.get_object()
        page = self.paginate_queryset(
            selectors.inventories_visible_to(request.user).filter(system=system).defer("data")
        )
        return self.get_paginated_response(
            serializers.InventorySummarySerializer(page, many=True).data
        )

    @extend_schema(responses=serializers.InventoryChangeSerializer(many=True))
    @action(detail=True, methods=["get"])
    def changes(self, request, pk=None):
        system = self.get_object()
        page = self.paginate_queryset(
            selectors.changes_visible_to(request.user).filter(system=system)
        )
        return self.get_paginated_response(
            serializers.InventoryChangeSerializer(page, many=True).data
        )


class InventoryViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """One inventory document as the system sent it."""

    serializer_class = serializers.InventorySerializer

    def get_queryset(self):
        return selectors.inventories_visible_to(self.request.user)


class InventoryChangeViewSet(viewsets.ReadOnlyModelViewSet):
    """Inventory changes across the visible fleet, newest first."""

    serializer_class = serializers.InventoryChangeSerializer
    filterset_class = InventoryChangeFilter
    pagination_class = NewestFirst

    def get_queryset(self):
        return selectors.changes_visible_to(self.request.user)


class FleetSummaryViewSet(viewsets.ViewSet):
    """Counts by status and type of the visible fleet (what the dashboard shows)."""

    @extend_schema(responses=serializers.FleetSummarySerializer)
    def list(self, request):
        systems = selectors.systems_visible_to(request.user)
        return Response(
            {
                "status": selectors.fleet_status_counts(systems),
                "types": selectors.fleet_type_counts(systems),
            }
        )
