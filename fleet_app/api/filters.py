"""Query filters of the staff API."""

import datetime as dt

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import BooleanFilter
from django_filters.widgets import BooleanWidget

from .. import selectors
from ..models import InventoryChange, System


class TrueOrFalseWidget(BooleanWidget):
    """Reads true/false (or 1/0) like django-filter's, and hands anything else on to the
    field to refuse instead of reading it as "not given"."""

    def value_from_datadict(self, data, files, name):
        raw = data.get(name)
        if raw is None or raw == "":
            return None
        value = super().value_from_datadict(data, files, name)
        return raw if value is None else value


class TrueOrFalseField(forms.NullBooleanField):
    widget = TrueOrFalseWidget

    def to_python(self, value):
        if value is None or isinstance(value, bool):
            return value
        raise ValidationError("Give true or false.", code="invalid")

    def validate(self, value):
        pass


class StrictBooleanFilter(BooleanFilter):
    """A true/false filter that answers 400 for any other value rather than ignore it."""

    field_class = TrueOrFalseField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", TrueOrFalseWidget)
        super().__init__(*args, **kwargs)


class StrictIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, handed to the database in UTC. Python accepts UTC offsets up to a
    day, PostgreSQL refuses those beyond 15:59 with an error: in UTC every valid time is
    one the database takes (one that leaves the years 1 to 9999 is the first or last)."""

    def to_python(self, value):
        value = super().to_python(value)
        if value is None or value.utcoffset() is None:
            return value
        try:
            return value.astimezone(dt.UTC)
        except OverflowError:
            edge = dt.datetime.min if value.utcoffset() > dt.timedelta(0) else dt.datetime.max
            return edge.replace(tzinfo=dt.UTC)


class StrictIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = StrictIsoDateTimeField


class SystemFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=System.Status.choices, method="filter_status", label="Status"
    )
    # Choices are what the caller may see: another tenant's id is "not a valid choice"
    # exactly like an id that does not exist, so the answer tells nothing about it.
    organization = django_filters.ModelChoiceFilter(
        queryset=lambda request: selectors.organizations_visible_to(request.user),
        label="Organization (id)",
    )
    q = django_filters.CharFilter(method="filter_search", label="Name, FQDN or key contains")
    seen_before = StrictIsoDateTimeFilter(field_name="last_heartbeat_at", lookup_expr="lt")
    seen_after = StrictIsoDateTimeFilter(field_name="last_heartbeat_at", lookup_expr="gte")
    deleted = StrictBooleanFilter(field_name="deleted_at", lookup_expr="isnull", exclude=True)

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


def visible_systems(request):
    return selectors.systems_visible_to(request.user)


class InventoryChangeFilter(django_filters.FilterSet):
    system = django_filters.ModelChoiceFilter(queryset=visible_systems, label="System (id)")
    since = StrictIsoDateTimeFilter(field_name="detected_at", lookup_expr="gte")

    class Meta:
        model = InventoryChange
        fields = ["system", "severity", "since"]
