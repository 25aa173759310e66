"""Staff API serializers for service backups and restores."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import BackupRun, RestoreRun, Service

RUN_FIELDS = [
    "id",
    "state",
    "phase",
    "percent",
    "total",
    "done",
    "failed",
    "error",
    "log",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
]


class ServiceSerializer(serializers.ModelSerializer):
    class Meta:
        model = Service
        fields = ["id", "name", "adapter", "config", "enabled", "created_at"]


class BackupRunSerializer(serializers.ModelSerializer):
    service = serializers.SlugRelatedField(slug_field="name", read_only=True)
    percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = BackupRun
        fields = [
            *RUN_FIELDS,
            "service",
            "schedule",
            "storage_key",
            "size",
            "sha256",
            "manifest",
            "pruned_at",
        ]


@extend_schema_field({"type": "string", "minLength": 1, "pattern": "^[-a-zA-Z0-9_]+$"})
class ServiceNameField(serializers.SlugRelatedField):
    """A service by its name (a slug)."""


class BackupRunCreateSerializer(serializers.Serializer):
    service = ServiceNameField(slug_field="name", queryset=Service.objects.all())


class ServiceOverviewSerializer(serializers.Serializer):
    service = serializers.CharField(help_text="The service's name.")
    last_backup = serializers.IntegerField(allow_null=True, help_text="Latest backup run.")
    last_drill = serializers.IntegerField(allow_null=True, help_text="Latest restore drill.")
    last_good_drill_at = serializers.DateTimeField(allow_null=True)
    drill_overdue = serializers.BooleanField(help_text="No verified drill within the threshold.")


class RestoreRunSerializer(serializers.ModelSerializer):
    service = serializers.SlugRelatedField(slug_field="name", read_only=True)
    percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = RestoreRun
        fields = [
            *RUN_FIELDS,
            "service",
            "backup",
            "purpose",
            "target",
            "dry_run",
            "plan",
            "verify",
            "verified",
        ]


class RestoreRunCreateSerializer(serializers.Serializer):
    backup = serializers.PrimaryKeyRelatedField(
        queryset=BackupRun.objects.select_related("service")
    )
    target = serializers.DictField(required=False, allow_empty=True, default=dict)
    dry_run = serializers.BooleanField(default=True)
