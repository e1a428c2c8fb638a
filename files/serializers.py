"""How files and their results look on the wire: the canonical API and the seed's."""

import functools
import json
from typing import Any

from django.core.validators import ProhibitNullCharactersValidator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from .models import METRICS, Anomaly, File, RecordError, stored_fields


class FileErrorSerializer(serializers.Serializer):
    """Why processing failed, and where (parts that are unknown are null)."""

    message = serializers.CharField()
    line = serializers.IntegerField(allow_null=True, help_text="1-based")
    column = serializers.IntegerField(
        allow_null=True, help_text="1-based, in characters"
    )
    offset = serializers.IntegerField(allow_null=True, help_text="0-based byte offset")
    pointer = serializers.CharField(allow_null=True, help_text="JSON Pointer")


@extend_schema_field(FileErrorSerializer)
class FileErrorField(serializers.JSONField):
    """The stored error object, documented with its parts."""


# How much of the servers list one file's summary carries: listed in file order
# until their JSON reaches this size. The engine keeps up to 1,000 servers of up to
# three 255-character strings each, which can come to megabytes; this is 500 to
# 700 servers of ordinary names, 21 of the longest. `server_count` always says how
# many there are.
SUMMARY_SERVERS_BYTES = 64 * 1024


def summary_capped(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with its servers list cut to SUMMARY_SERVERS_BYTES of JSON."""
    servers = summary.get("servers")
    if not servers:
        return summary
    listed, used = [], 0
    for server in servers:
        used += len(json.dumps(server, ensure_ascii=False).encode()) + 1
        if used > SUMMARY_SERVERS_BYTES:
            break
        listed.append(server)
    if len(listed) == len(servers):
        return summary
    return {**summary, "servers": listed}


def summary_bounded(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary without its servers list: what every list item and event carries."""
    if "servers" not in summary:
        return summary
    return {key: value for key, value in summary.items() if key != "servers"}


SUMMARY_DESCRIPTION = (
    "What processing found: for `server_metrics` the servers, counts, time span, "
    "min/max/mean per metric and anomalies per metric; for `json` the top-level "
    "type, item or key count, depth and size; `{}` until processed."
)


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": True,
        "description": SUMMARY_DESCRIPTION
        + " `servers` lists the servers in file order until their JSON reaches "
        f"{SUMMARY_SERVERS_BYTES // 1024} KiB (and at most 1,000); `server_count` "
        "is how many there are.",
    }
)
class SummaryField(serializers.JSONField):
    """The processing summary of one file, its servers list capped."""

    def to_representation(self, value: Any) -> Any:
        return summary_capped(super().to_representation(value) or {})


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": True,
        "description": SUMMARY_DESCRIPTION
        + " Without the `servers` list (`server_count` says how many there are): "
        "the one file's resource (`GET /api/files/{id}/`) has it.",
    }
)
class BoundedSummaryField(serializers.JSONField):
    """The processing summary without its servers list, for lists and events."""

    def to_representation(self, value: Any) -> Any:
        return summary_bounded(super().to_representation(value) or {})


@extend_schema_field(OpenApiTypes.BINARY)
class UploadField(serializers.FileField):
    """A file part of a multipart request (documented as binary, not as a URL)."""


class FileSerializer(serializers.ModelSerializer):
    """One file's resource (`GET /api/files/{id}/`, upload and action answers):
    the summary with its servers list capped."""

    error = FileErrorField(read_only=True, allow_null=True)
    summary = SummaryField(read_only=True)

    class Meta:
        model = File
        # Everything but who owns it, where its bytes are and the client's type.
        fields = stored_fields(
            File, without=("owner", "updated_by", "content", "declared_type")
        )
        read_only_fields = fields


class FileItemSerializer(FileSerializer):
    """The bounded file resource of lists, events and the snapshot: every field of
    the file resource, the summary without its servers list."""

    summary = BoundedSummaryField(read_only=True)

    class Meta(FileSerializer.Meta):
        pass


@functools.cache
def _file_item_serializer() -> FileItemSerializer:
    # Building a ModelSerializer's fields inspects the model each time: every
    # event carries a file resource, so build them once.
    return FileItemSerializer()


@functools.cache
def _file_serializer() -> FileSerializer:
    # As above: every upload answers with the file resource (about 1 ms a request
    # to build its fields again).
    return FileSerializer()


def file_resource(file: File) -> dict[str, Any]:
    """The bounded file resource (lists, events) as plain JSON-ready data."""
    return dict(_file_item_serializer().to_representation(file))


def file_detail(file: File) -> dict[str, Any]:
    """One file's resource (`FileSerializer`) as plain JSON-ready data."""
    return dict(_file_serializer().to_representation(file))


class FileUploadSerializer(serializers.Serializer):
    """A multipart upload: the file itself, and optionally the name to show."""

    file = UploadField(allow_empty_file=False)
    name = serializers.CharField(required=False, max_length=255)


_TIMESTAMP = serializers.DateTimeField()
_NUMBER_OR_NULL = {"type": "number", "nullable": True}


def seed_record(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record as the seed kept it in its document: `timestamp` and metrics."""
    return {**record, "timestamp": _TIMESTAMP.to_representation(record["timestamp"])}


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": True,
        "description": "For `json` files the structural summary. Otherwise the "
        "summary, with the per-metric min/max/mean/count under `statistics` and, "
        "for a single file (not in the list or in socket messages), `metrics`: at "
        "most 500 of its records, evenly chosen, anomalous ones first, in order. "
        "A single file's `servers` lists the servers until their JSON reaches "
        f"{SUMMARY_SERVERS_BYTES // 1024} KiB; the list and socket messages leave "
        "`servers` out (`server_count` says how many there are).",
        "properties": {
            "statistics": {"type": "object", "additionalProperties": True},
            "metrics": {
                "type": "array",
                "maxItems": 500,
                "items": {
                    "type": "object",
                    "properties": {
                        "timestamp": {"type": "string", "format": "date-time"},
                        **{metric: _NUMBER_OR_NULL for metric in METRICS},
                    },
                },
            },
        },
    }
)
class SeedMetaDataField(serializers.Field):
    """The seed's `meta_data`: the summary, and the records in context["records"].

    Never the whole document: the records are a bounded selection, passed in by
    the caller only where one file is asked for, and with them the servers list
    (capped); without them (the list, socket messages) there is no servers list.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, file: File) -> dict[str, Any]:
        records = self.context.get("records")
        one_file = records is not None
        summary = (summary_capped if one_file else summary_bounded)(file.summary or {})
        if file.kind == File.Kind.JSON:
            return summary
        meta = {key: value for key, value in summary.items() if key != "metrics"}
        meta["statistics"] = summary.get("metrics", {})
        if one_file:
            meta["metrics"] = [seed_record(record) for record in records]
        return meta


class SeedFileSerializer(serializers.ModelSerializer):
    """The seed system's file shape and types, kept for its clients.

    Pass `context={"records": ...}` (`selectors.metric_record_sample`) to include
    the records the seed app charts.
    """

    filename = serializers.CharField(source="name", read_only=True)
    type = serializers.CharField(source="declared_type", read_only=True)
    is_processed = serializers.SerializerMethodField()
    meta_data = SeedMetaDataField()
    task_status = serializers.SerializerMethodField()
    # Strings, as the seed's schema had them (its user ids were strings).
    created_by_id = serializers.CharField(source="owner_id", read_only=True)
    updated_by_id = serializers.CharField(allow_null=True, read_only=True)

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
        """`processing` until the outcome, then `processed` or the error text.

        The seed had no `queued`: its app shows a spinner only for `processing`.
        """
        if file.status == File.Status.FAILED:
            return file.error_text
        if file.status == File.Status.PROCESSED:
            return File.Status.PROCESSED
        return File.Status.PROCESSING


# What DRF's CharField checks in every text it accepts.
TEXT_VALIDATORS = (
    ProhibitNullCharactersValidator(),
    ProhibitSurrogateCharactersValidator(),
)


@extend_schema_field(
    {
        "type": "object",
        "description": "A JSON object (sent as JSON text in its form part); "
        "`filename` and `type` are used, other keys are ignored.",
        "properties": {
            "filename": {"type": "string", "description": "The name to show."},
            "type": {"type": "string", "description": "The declared type."},
        },
        "example": {"filename": "server_4.json", "type": "application/json"},
    }
)
class SeedFormField(serializers.JSONField):
    """The seed's JSON-in-a-form-field (`file_data_create_form`, `file_update_form`)."""

    def to_internal_value(self, data: Any) -> dict[str, str]:
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise serializers.ValidationError(f"Not valid JSON: {exc}") from exc
            except RecursionError as exc:
                raise serializers.ValidationError(
                    "Not valid JSON: nested too deeply"
                ) from exc
        if not isinstance(data, dict):
            raise serializers.ValidationError("Expected a JSON object.")
        details = {
            key: str(data[key])
            for key in ("filename", "type")
            if data.get(key) not in (None, "")
        }
        # JSON escapes can spell what PostgreSQL cannot store (\u0000) or UTF-8
        # cannot encode (a lone \ud800): refused here, before the upload is stored.
        for value in details.values():
            for validator in TEXT_VALIDATORS:
                validator(value)
        return details


class SeedUploadSerializer(serializers.Serializer):
    """`POST /files/uploadfile/`: multipart `file` and `file_data_create_form`."""

    file = UploadField(allow_empty_file=False)
    file_data_create_form = SeedFormField(required=False)


class SeedUpdateSerializer(serializers.Serializer):
    """`PUT /files/updatefile/{id}`: optional `file` and `file_update_form`."""

    file = UploadField(required=False, allow_empty_file=False)
    file_update_form = SeedFormField(required=False)


class AnomalySerializer(serializers.ModelSerializer):
    class Meta:
        model = Anomaly
        fields = stored_fields(Anomaly, without=("file",))


class RecordErrorSerializer(serializers.ModelSerializer):
    class Meta:
        model = RecordError
        fields = stored_fields(RecordError, without=("file",))


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
