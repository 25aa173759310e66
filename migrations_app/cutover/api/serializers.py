"""Cutover staff API serializers (read-only). Digests of legacy tokens never leave."""

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from fleet_app.models import System

from .. import selectors
from ..models import FingerprintAnomaly, LegacyMapping

# --- Summary --------------------------------------------------------------------------------


class TotalsSerializer(serializers.Serializer):
    mappings = serializers.IntegerField(help_text="Rows of proxy_mappings.")
    legacy = serializers.IntegerField(help_text="Not rotated yet.")
    rotated = serializers.IntegerField(help_text="Native credentials issued.")
    confirmed = serializers.IntegerField(help_text="Native credentials used.")
    fingerprinted = serializers.IntegerField(
        help_text="An inventory names the legacy id in facts.migration."
    )
    released = serializers.IntegerField(help_text="Legacy slot freed (/api/Utils/freekey).")


class BlockersSerializer(serializers.Serializer):
    not_rotated = serializers.IntegerField()
    rotated_unconfirmed = serializers.IntegerField()
    confirmed_unfingerprinted = serializers.IntegerField()
    anomalies_open = serializers.IntegerField()


class ProjectionSerializer(serializers.Serializer):
    window_days = serializers.IntegerField()
    fingerprinted_in_window = serializers.IntegerField()
    rate_per_day = serializers.FloatField()
    completion_at = serializers.DateTimeField(
        allow_null=True, help_text="Null when done, or when there was no progress in the window."
    )
    note = serializers.CharField()


@extend_schema_serializer(many=False)
class SummarySerializer(serializers.Serializer):
    as_of = serializers.DateTimeField()
    totals = TotalsSerializer()
    remaining = serializers.IntegerField(help_text="Mappings not fingerprinted yet.")
    percent_done = serializers.FloatField(help_text="fingerprinted / mappings, floored to 0.1.")
    decommission_ready = serializers.BooleanField(help_text="Every mapping is fingerprinted.")
    blockers = BlockersSerializer()
    projection = ProjectionSerializer()

    @staticmethod
    def from_summary(summary: selectors.CutoverSummary) -> dict:
        return {
            "as_of": summary.now,
            "totals": {
                "mappings": summary.mappings,
                "legacy": summary.legacy,
                "rotated": summary.rotated,
                "confirmed": summary.confirmed,
                "fingerprinted": summary.fingerprinted,
                "released": summary.released,
            },
            "remaining": summary.remaining,
            "percent_done": summary.percent_done,
            "decommission_ready": summary.decommission_ready,
            "blockers": summary.blockers,
            "projection": {
                "window_days": selectors.PROJECTION_WINDOW_DAYS,
                "fingerprinted_in_window": summary.fingerprinted_in_window,
                "rate_per_day": round(summary.rate_per_day, 3),
                "completion_at": summary.projected_completion_at,
                "note": summary.projection_note,
            },
        }


# --- Mappings -------------------------------------------------------------------------------


class MappingSystemSerializer(serializers.ModelSerializer):
    organization = serializers.CharField(source="organization.name", read_only=True)

    class Meta:
        model = System
        fields = [
            "id",
            "system_key",
            "name",
            "organization",
            "last_heartbeat_at",
            "suspended_at",
            "deleted_at",
        ]


class MappingSerializer(serializers.ModelSerializer):
    state = serializers.CharField(read_only=True, help_text="The furthest step reached.")
    last_contact_at = serializers.SerializerMethodField(
        help_text="Latest of legacy_last_seen_at, last_attempt_at and the system's heartbeat."
    )
    system = MappingSystemSerializer(read_only=True)
    last_attempt_outcome = serializers.CharField(
        read_only=True,
        help_text="The HTTP status of the last /proxy/credentials call (empty: none yet).",
    )
    knocking = serializers.SerializerMethodField(
        help_text="Confirmed, and the legacy pair was presented again since (needs re-opening)."
    )

    class Meta:
        model = LegacyMapping
        fields = [
            "id",
            "legacy_system_id",
            "state",
            "system",
            "created_at",
            "legacy_last_seen_at",
            "last_attempt_at",
            "last_attempt_outcome",
            "last_attempt_address",
            "knocked_at",
            "knocking",
            "last_contact_at",
            "rotated_at",
            "rotation_count",
            "confirmed_at",
            "fingerprint_at",
            "migrated_at",
            "released_at",
            "reopened_at",
        ]

    def get_knocking(self, mapping: LegacyMapping) -> bool:
        return bool(
            mapping.confirmed_at
            and mapping.knocked_at
            and mapping.knocked_at > mapping.confirmed_at
        )

    def get_last_contact_at(self, mapping: LegacyMapping) -> str | None:
        stamp = selectors.last_contact(mapping)
        return serializers.DateTimeField().to_representation(stamp) if stamp else None


# --- Anomalies ------------------------------------------------------------------------------


class AnomalySerializer(serializers.ModelSerializer):
    system = MappingSystemSerializer(read_only=True)

    class Meta:
        model = FingerprintAnomaly
        fields = [
            "id",
            "system",
            "inventory",
            "kind",
            "claimed_legacy_system_id",
            "expected_legacy_system_id",
            "first_seen_at",
            "last_seen_at",
            "occurrences",
            "resolved_at",
        ]
