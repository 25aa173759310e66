"""Staff API serializers for cluster backups."""

from rest_framework import serializers

from ..models import ClusterBackup


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
