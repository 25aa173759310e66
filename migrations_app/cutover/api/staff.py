"""The cutover staff API: the dashboard's numbers and lists, for scripts and other tools.

The counters are fleet-wide, so the permission table opens these routes to the platform
and to tenant staff at the root organization only.
"""

from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from fleet_app.api.filters import StrictBooleanFilter
from fleet_app.api.pagination import NewestFirst, StrictCursorPagination

from .. import selectors
from ..models import FingerprintAnomaly, LegacyMapping
from . import serializers


class OldestFirst(StrictCursorPagination):
    """Stragglers in the order of their partial index; the view says which."""

    page_size = 50

    def get_ordering(self, request, queryset, view):
        return tuple(queryset.query.order_by)


class SummaryViewSet(viewsets.ViewSet):
    """Totals, decommission readiness, blockers and the projection (what the dashboard shows)."""

    @extend_schema(responses=serializers.SummarySerializer)
    def list(self, request):
        summary = selectors.cutover_summary()
        return Response(
            serializers.SummarySerializer(serializers.SummarySerializer.from_summary(summary)).data
        )


class StragglerViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Mappings stuck before a step, oldest first.

    ``not_rotated``: never rotated, oldest import first. ``unconfirmed``: rotated, native
    credentials never used, oldest rotation first.
    """

    serializer_class = serializers.MappingSerializer
    pagination_class = OldestFirst
    filter_backends: list = []

    def get_queryset(self):
        kind = self.request.query_params.get("kind", "")
        if kind not in selectors.STRAGGLER_KINDS:
            raise ValidationError(
                {"kind": f"Give kind={' or kind='.join(selectors.STRAGGLER_KINDS)}."}
            )
        return selectors.stragglers(kind)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "kind",
                OpenApiTypes.STR,
                enum=list(selectors.STRAGGLER_KINDS),
                required=True,
                description="not_rotated or unconfirmed",
            )
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)


class AnomalyFilter(filters.FilterSet):
    open = StrictBooleanFilter(
        field_name="resolved_at", lookup_expr="isnull", label="Open (not resolved) only"
    )

    class Meta:
        model = FingerprintAnomaly
        fields = ["kind", "open"]


class AnomalyViewSet(viewsets.ReadOnlyModelViewSet):
    """Fingerprint anomalies, newest first; ``?open=true`` for the unresolved ones."""

    serializer_class = serializers.AnomalySerializer
    pagination_class = NewestFirst
    filterset_class = AnomalyFilter
    queryset = FingerprintAnomaly.objects.select_related("system__organization")


class MappingFilter(filters.FilterSet):
    state = filters.ChoiceFilter(
        choices=[(state, state) for state in selectors.MAPPING_STATES],
        method="filter_state",
        label="Furthest step reached; released: the legacy slot was freed",
    )
    q = filters.CharFilter(method="filter_search", label="Exact legacy_system_id or system_key")

    class Meta:
        model = LegacyMapping
        fields = ["state", "q"]

    def filter_state(self, queryset, name, value):
        return selectors.mappings_in_state(queryset, value)

    def filter_search(self, queryset, name, value):
        return selectors.mappings_search(queryset, value)


class MappingViewSet(viewsets.ReadOnlyModelViewSet):
    """Legacy mappings (``proxy_mappings``), newest first."""

    serializer_class = serializers.MappingSerializer
    pagination_class = NewestFirst
    filterset_class = MappingFilter
    queryset = LegacyMapping.objects.select_related("system__organization")
