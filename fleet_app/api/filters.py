"""Query filters of the staff API."""

import django_filters

from ..models import InventoryChange, Organization, System


class SystemFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=System.Status.choices, method="filter_status", label="Status"
    )
    organization = django_filters.ModelChoiceFilter(
        queryset=Organization.objects.all(), label="Organization (id)"
    )
    q = django_filters.CharFilter(method="filter_search", label="Name, FQDN or key contains")
    seen_before = django_filters.IsoDateTimeFilter(field_name="last_heartbeat_at", lookup_expr="lt")
    seen_after = django_filters.IsoDateTimeFilter(field_name="last_heartbeat_at", lookup_expr="gte")
    deleted = django_filters.BooleanFilter(
        field_name="deleted_at", lookup_expr="isnull", exclude=True
    )

    class Meta:
        model = System
        fields = ["type", "version", "organization", "status"]

    def filter_status(self, queryset, name, value):
        return queryset.with_status_filter(value)

    def filter_search(self, queryset, name, value):
        from django.db.models import Q

        return queryset.filter(
            Q(name__icontains=value) | Q(fqdn__icontains=value) | Q(system_key__iexact=value)
        )


class InventoryChangeFilter(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="detected_at", lookup_expr="gte")

    class Meta:
        model = InventoryChange
        fields = ["system", "severity", "since"]
