"""Uploaded files, what processing found in them, and the rules it checks against."""

import uuid
from pathlib import PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.urls import reverse

from .engine import METRICS

__all__ = [
    "METRICS",
    "Anomaly",
    "AnomalyRule",
    "File",
    "MetricRecord",
    "PendingDeletion",
    "RecordError",
    "Upload",
]


UPLOADS_DIR = "uploads"


def upload_path(instance: "File", filename: str) -> str:
    """Store under a generated name: the client's filename never reaches the disk."""
    return f"{UPLOADS_DIR}/{uuid.uuid4().hex}.json"


class File(models.Model):
    """An uploaded JSON file and the state of its processing."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        PROCESSING = "processing"
        PROCESSED = "processed"
        FAILED = "failed"

    class Kind(models.TextChoices):
        SERVER_METRICS = "server_metrics"
        JSON = "json"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="files"
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    name = models.CharField(
        max_length=255, help_text="The client's filename, for display only."
    )
    declared_type = models.CharField(
        max_length=100, blank=True, help_text="The type the client declared (seed API)."
    )
    content = models.FileField(upload_to=upload_path, max_length=255)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    # Null until processing has decided: "unknown" is not an empty string.
    kind = models.CharField(  # noqa: DJ001
        max_length=20, choices=Kind, null=True, blank=True
    )
    status = models.CharField(max_length=20, choices=Status, default=Status.QUEUED)
    progress = models.FloatField(default=0.0)
    error = models.JSONField(null=True, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    record_count = models.PositiveIntegerField(default=0)
    invalid_record_count = models.PositiveIntegerField(default=0)
    anomaly_count = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    generation = models.PositiveIntegerField(
        default=1,
        help_text="Bumped by every replace, reprocess and requeue: a run writes only "
        "while the file is still at the generation it claimed.",
    )
    task_id = models.CharField(max_length=64, blank=True)
    last_event_id = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="file_owner_created"),
            models.Index(fields=["owner", "status"], name="file_owner_status"),
            models.Index(fields=["status", "updated_at"], name="file_status_updated"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0) & Q(progress__lte=1),
                name="file_progress_between_0_and_1",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("file-page", args=[self.pk])

    @property
    def is_final(self) -> bool:
        """Whether processing has reached an outcome."""
        return self.status in (self.Status.PROCESSED, self.Status.FAILED)

    @property
    def error_text(self) -> str:
        """The failure as one line of text, with its position when known."""
        if not self.error:
            return ""
        where = []
        if self.error.get("line") is not None:
            where.append(f"line {self.error['line']}, column {self.error['column']}")
        if self.error.get("offset") is not None:
            where.append(f"byte offset {self.error['offset']}")
        if self.error.get("pointer"):
            where.append(f"at {self.error['pointer']}")
        message = self.error.get("message", "")
        return f"{message} ({'; '.join(where)})" if where else message

    @property
    def stored_name(self) -> str:
        """The generated name the bytes are stored under."""
        return PurePosixPath(self.content.name).name


# RESULT_FILE_NOTE: results point at their file without a foreign key in the
# database. Checking one per row cost about a third of the time PostgreSQL spends
# storing a record, and a deferred check at commit made a DELETE of the file fail
# (or wait) while a run was storing its rows. What keeps results from outliving
# their file instead: a run writes only while its file is at the generation it
# claimed (checked at every batch and, under the row lock, at its commit), and
# deleting a file removes its results after commit (`PendingDeletion`, then the
# sweep).


class MetricRecord(models.Model):
    """One valid metrics record of a file."""

    # Keyed by (file, index): the one index the table has, which serves lookups by
    # file and the chart's range scans. No surrogate id or index of the file's own,
    # each of which would only slow down the COPY of a large file; no foreign key
    # in the database either (RESULT_FILE_NOTE).
    pk = models.CompositePrimaryKey("file", "index")
    file = models.ForeignKey(
        File,
        on_delete=models.DO_NOTHING,
        related_name="records",
        db_index=False,
        db_constraint=False,
    )
    index = models.PositiveIntegerField(help_text="Position among the file's records.")
    server = models.CharField(max_length=255)
    timestamp = models.DateTimeField()
    cpu_usage = models.FloatField(null=True, blank=True)
    memory_usage = models.FloatField(null=True, blank=True)
    disk_read = models.FloatField(null=True, blank=True)
    disk_write = models.FloatField(null=True, blank=True)
    network_in = models.FloatField(null=True, blank=True)
    network_out = models.FloatField(null=True, blank=True)
    response_time = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["file", "index"]

    def __str__(self) -> str:
        return f"record {self.index} of file {self.file_id}"


class Anomaly(models.Model):
    """A metric value outside its rule's range."""

    # Lookups by file use the (file, metric) index; no foreign key in the database
    # (RESULT_FILE_NOTE).
    file = models.ForeignKey(
        File,
        on_delete=models.DO_NOTHING,
        related_name="anomalies",
        db_index=False,
        db_constraint=False,
    )
    record_index = models.PositiveIntegerField()
    server = models.CharField(max_length=255)
    timestamp = models.DateTimeField()
    metric = models.CharField(max_length=32)
    value = models.FloatField()
    min_value = models.FloatField()
    max_value = models.FloatField()

    class Meta:
        ordering = ["file", "record_index", "id"]
        verbose_name_plural = "anomalies"
        indexes = [models.Index(fields=["file", "metric"], name="anomaly_file_metric")]

    def __str__(self) -> str:
        when = f"{self.timestamp:%Y-%m-%dT%H:%M:%SZ}"
        return f"{self.metric} out of range: {self.value:g} at {when}"


class RecordError(models.Model):
    """A record skipped by validation, located by a JSON Pointer."""

    # No foreign key in the database (RESULT_FILE_NOTE).
    file = models.ForeignKey(
        File,
        on_delete=models.DO_NOTHING,
        related_name="record_errors",
        db_constraint=False,
    )
    pointer = models.CharField(max_length=1024)
    message = models.CharField(max_length=1024)

    class Meta:
        ordering = ["file", "id"]

    def __str__(self) -> str:
        return f"{self.pointer}: {self.message}"


class PendingDeletion(models.Model):
    """What a deleted or replaced file left to remove: its results and stored bytes.

    Written in the transaction that deletes or replaces the file, removed once the
    leftovers are gone (right after commit, or by the periodic sweep if that failed).
    """

    file_id = models.BigIntegerField(
        null=True,
        blank=True,
        db_index=True,
        help_text="The deleted file whose results to remove.",
    )
    content = models.CharField(
        max_length=255, blank=True, help_text="Stored bytes to remove."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["created_at"], name="pending_created")]

    def __str__(self) -> str:
        what = [f"results of file {self.file_id}"] if self.file_id else []
        return " and ".join([*what, *([self.content] if self.content else [])])


class AnomalyRule(models.Model):
    """The inclusive range a metric must stay in; editable in the admin."""

    metric = models.CharField(
        max_length=32, unique=True, choices=[(m, m) for m in METRICS]
    )
    min_value = models.FloatField()
    max_value = models.FloatField()
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["metric"]
        constraints = [
            models.CheckConstraint(
                condition=Q(min_value__lte=models.F("max_value")),
                name="rule_min_not_above_max",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.metric}: {self.min_value:g}–{self.max_value:g}"

    def clean(self) -> None:
        """The range's own error on the field, before the database's constraint."""
        if (
            self.min_value is not None
            and self.max_value is not None
            and self.min_value > self.max_value
        ):
            raise ValidationError(
                {
                    "max_value": (
                        f"The maximum ({self.max_value:g}) must not be below the "
                        f"minimum ({self.min_value:g})."
                    )
                }
            )


class Upload(models.Model):
    """A resumable (tus) upload: bytes arriving chunk by chunk, then a File.

    The chunks are appended to `content` in storage as they arrive; the last one
    turns them into a File through the same service as a single-request upload,
    or, when the upload `replaces` a file, into that file's new content (as a PUT
    does).
    An upload not finished by `expires` is deleted with its bytes (beat); a
    finished one keeps only its row until then (its bytes are the file's).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads"
    )
    filename = models.CharField(
        max_length=255, help_text="The client's filename (Upload-Metadata)."
    )
    filetype = models.CharField(
        max_length=100, blank=True, help_text="The type the client declared."
    )
    length = models.PositiveBigIntegerField(help_text="Upload-Length: bytes in all.")
    offset = models.PositiveBigIntegerField(
        default=0, help_text="Bytes received and stored so far."
    )
    content = models.CharField(max_length=255, help_text="Where the bytes are stored.")
    # In S3 (files/resumable.py): the multipart upload the chunks become parts of,
    # the parts so far ([{"etag", "size"}], numbered from 1), and the object that
    # holds the bytes not yet in a part (S3 takes none under 5 MiB but the last).
    multipart_id = models.CharField(
        max_length=1024, blank=True, help_text="The S3 multipart upload's id."
    )
    parts = models.JSONField(
        default=list, blank=True, help_text="The S3 parts stored so far."
    )
    tail = models.CharField(
        max_length=255, blank=True, help_text="Bytes not yet in an S3 part."
    )
    file = models.ForeignKey(
        File,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The file the last chunk created, or replaced.",
    )
    # No constraint and nothing done on the file's delete: deleting a file locks
    # no upload (an upload's last chunk locks the upload, then the file), and an
    # upload whose file is gone is not found and goes with the expired ones.
    replaces = models.ForeignKey(
        File,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
        help_text="The file whose content this upload replaces (Upload-Metadata).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField(
        help_text="Deleted after this, with its bytes if unfinished (Upload-Expires)."
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["expires"], name="upload_expires")]

    def __str__(self) -> str:
        return f"{self.filename} ({self.offset} of {self.length} bytes)"

    @property
    def is_complete(self) -> bool:
        return self.offset == self.length


def stored_fields(
    model: type[models.Model], *, without: tuple[str, ...] = ()
) -> list[str]:
    """The names of a model's stored fields in declaration order, but `without`: the
    one source of every list that shows a model whole (admin, serializers)."""
    return [f.name for f in model._meta.concrete_fields if f.name not in without]
