"""How files and their results look on the wire: the canonical API and the seed's."""

import json
from typing import Any

from rest_framework import serializers

from notifications.models import Event

from .models import METRICS, Anomaly, File, RecordError


class FileSerializer(serializers.ModelSerializer):
    """The file resource of the canonical API, also carried by every event."""

    error = serializers.JSONField(read_only=True, allow_null=True)
    summary = serializers.JSONField(read_only=True)

    class Meta:
        model = File
        fields = [
            "id",
            "name",
            "size",
            "sha256",
            "kind",
            "status",
            "progress",
            "error",
            "summary",
            "record_count",
            "invalid_record_count",
            "anomaly_count",
            "attempts",
            "task_id",
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
            "last_event_id",
        ]
        read_only_fields = fields


def file_resource(file: File) -> dict[str, Any]:
    """The file resource as plain JSON-ready data."""
    return dict(FileSerializer(file).data)


class FileUploadSerializer(serializers.Serializer):
    """A multipart upload: the file itself, and optionally the name to show."""

    file = serializers.FileField(allow_empty_file=False)
    name = serializers.CharField(required=False, max_length=255)


class SeedFileSerializer(serializers.ModelSerializer):
    """The seed system's file shape, kept for its clients."""

    filename = serializers.CharField(source="name")
    type = serializers.CharField(source="declared_type")
    is_processed = serializers.SerializerMethodField()
    meta_data = serializers.JSONField(source="summary")
    task_status = serializers.SerializerMethodField()
    created_by_id = serializers.IntegerField(source="owner_id")
    updated_by_id = serializers.IntegerField(allow_null=True)

    class Meta:
        model = File
        fields = [
            "id",
            "filename",
            "size",
            "type",
            "is_processed",
            "meta_data",
            "task_id",
            "task_status",
            "created_at",
            "updated_at",
            "created_by_id",
            "updated_by_id",
        ]
        read_only_fields = fields

    def get_is_processed(self, file: File) -> bool:
        return file.status == File.Status.PROCESSED

    def get_task_status(self, file: File) -> str:
        """`queued`, `processing`, `processed`, or the error text."""
        return file.error_text if file.status == File.Status.FAILED else file.status


class SeedFormField(serializers.JSONField):
    """The seed's JSON-in-a-form-field (`file_data_create_form`, `file_update_form`)."""

    def to_internal_value(self, data: Any) -> dict[str, str]:
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise serializers.ValidationError(f"Not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise serializers.ValidationError("Expected a JSON object.")
        return {
            key: str(data[key])
            for key in ("filename", "type")
            if data.get(key) not in (None, "")
        }


class SeedUploadSerializer(serializers.Serializer):
    """`POST /files/uploadfile/`: multipart `file` and `file_data_create_form`."""

    file = serializers.FileField(allow_empty_file=False)
    file_data_create_form = SeedFormField(required=False)


class SeedUpdateSerializer(serializers.Serializer):
    """`PUT /files/updatefile/{id}`: optional `file` and `file_update_form`."""

    file = serializers.FileField(required=False, allow_empty_file=False)
    file_update_form = SeedFormField(required=False)


class AnomalySerializer(serializers.ModelSerializer):
    class Meta:
        model = Anomaly
        fields = [
            "id",
            "record_index",
            "server",
            "timestamp",
            "metric",
            "value",
            "min_value",
            "max_value",
        ]


class RecordErrorSerializer(serializers.ModelSerializer):
    class Meta:
        model = RecordError
        fields = ["id", "pointer", "message"]


class EventSerializer(serializers.ModelSerializer):
    """A durable event exactly as the WebSocket sent it."""

    class Meta:
        model = Event
        fields = ["message"]

    def to_representation(self, event: Event) -> dict[str, Any]:
        return event.message


class MetricBucketSerializer(serializers.Serializer):
    """One downsampled bucket of a series."""

    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    min = serializers.FloatField()
    max = serializers.FloatField()
    mean = serializers.FloatField()
    count = serializers.IntegerField()


class RuleRangeSerializer(serializers.Serializer):
    min = serializers.FloatField()
    max = serializers.FloatField()


class MetricSeriesSerializer(serializers.Serializer):
    """The metrics endpoint's answer (documents the schema)."""

    metric = serializers.CharField()
    server = serializers.CharField(allow_null=True)
    record_count = serializers.IntegerField()
    points = serializers.IntegerField()
    rule = RuleRangeSerializer(allow_null=True)
    series = MetricBucketSerializer(many=True)


class MetricSeriesQuerySerializer(serializers.Serializer):
    """Query parameters of the metrics endpoint."""

    metric = serializers.ChoiceField(choices=METRICS, default="cpu_usage")
    points = serializers.IntegerField(min_value=2, max_value=5000, default=500)
    server = serializers.CharField(required=False, max_length=255)
