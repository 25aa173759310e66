"""Staff API serializers for backups."""

from rest_framework import serializers

from ..models import BackupRun, ClusterBackup, RestoreRun, Service

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


class ClusterBackupSerializer(serializers.ModelSerializer):
    system_key = serializers.CharField(source="system.system_key", read_only=True)

    class Meta:
        model = ClusterBackup
        fields = [
            "id",
            "system",
            "system_key",
            "organization",
            "filename",
            "mimetype",
            "size",
            "sha256",
            "uploaded_at",
            "corrupt_at",
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


class BackupRunCreateSerializer(serializers.Serializer):
    service = serializers.SlugRelatedField(slug_field="name", queryset=Service.objects.all())


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
