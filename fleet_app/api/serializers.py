"""Staff API serializers (read-only views of the fleet)."""

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from ..models import Inventory, InventoryChange, Organization, System


class OrganizationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Organization
        fields = ["id", "name", "kind", "parent", "created_at"]


class SystemSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True)
    organization = OrganizationSerializer(read_only=True)

    class Meta:
        model = System
        fields = [
            "id",
            "system_key",
            "name",
            "ui_name",
            "type",
            "fqdn",
            "ipv4_address",
            "ipv6_address",
            "version",
            "status",
            "organization",
            "created_at",
            "registered_at",
            "last_heartbeat_at",
            "last_inventory_at",
            "suspended_at",
            "deleted_at",
        ]


class InventorySummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = Inventory
        fields = ["id", "system", "received_at", "size"]


class InventorySerializer(serializers.ModelSerializer):
    class Meta:
        model = Inventory
        fields = ["id", "system", "received_at", "size", "data"]


class InventoryChangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = InventoryChange
        fields = ["id", "system", "inventory", "detected_at", "path", "old", "new", "severity"]


class StatusCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    unknown = serializers.IntegerField(help_text="Never sent a heartbeat.")
    active = serializers.IntegerField()
    inactive = serializers.IntegerField()
    suspended = serializers.IntegerField()
    never_inventoried = serializers.IntegerField()
    registered = serializers.IntegerField(help_text="Registered with their secret.")
    unregistered = serializers.IntegerField(help_text="Created, secret never used.")


class TypeCountSerializer(serializers.Serializer):
    type = serializers.CharField()
    count = serializers.IntegerField()


@extend_schema_serializer(many=False)
class FleetSummarySerializer(serializers.Serializer):
    """Counts by status and by type of the visible fleet (deleted systems left out)."""

    status = StatusCountsSerializer()
    types = TypeCountSerializer(many=True)
