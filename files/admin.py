"""Staff views of files, their results and the anomaly rules."""

import contextlib

from django.contrib import admin, messages
from django.db.models import DurationField, ExpressionWrapper, F, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from notifications.models import Event

from . import services
from .exceptions import FileGone
from .models import Anomaly, AnomalyRule, File, RecordError, Upload, stored_fields


def changelist_link(model, text: str, **filters: object) -> str:
    """A link to the admin list of `model`, filtered."""
    meta = model._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
    query = "&".join(f"{key}={value}" for key, value in filters.items())
    return format_html('<a href="{}?{}">{}</a>', url, query, text)


def file_link(file_id: int | None) -> str:
    """A link to a file's admin page, or a dash."""
    if file_id is None:
        return "–"
    url = reverse("admin:files_file_change", args=[file_id])
    return format_html('<a href="{}">file {}</a>', url, file_id)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Results are written by processing only."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(File)
class FileAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "name",
        "owner",
        "status",
        "kind",
        "size",
        "record_count",
        "invalid_records",
        "anomalies",
        "attempts",
        "created_at",
        "duration",
    ]
    list_filter = ["status", "kind", "owner", "created_at"]
    search_fields = ["name", "sha256", "task_id", "owner__username"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    actions = ["reprocess"]
    # Every stored field but the editable ones (and the error as its text).
    readonly_fields = [
        "error_text" if name == "error" else name
        for name in stored_fields(File, without=("id", "name", "declared_type"))
    ] + ["duration", "results"]
    fields = ["name", "declared_type", *readonly_fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[File]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                processing_time=ExpressionWrapper(
                    F("finished_at") - F("started_at"), output_field=DurationField()
                )
            )
        )

    @admin.display(description="duration", ordering="processing_time")
    def duration(self, file: File) -> str:
        if file.started_at and file.finished_at:
            return f"{(file.finished_at - file.started_at).total_seconds():.2f} s"
        return "–"

    @admin.display(description="anomalies", ordering="anomaly_count")
    def anomalies(self, file: File) -> str:
        return changelist_link(
            Anomaly, str(file.anomaly_count), file__id__exact=file.pk
        )

    @admin.display(description="invalid records", ordering="invalid_record_count")
    def invalid_records(self, file: File) -> str:
        return changelist_link(
            RecordError, str(file.invalid_record_count), file__id__exact=file.pk
        )

    @admin.display(description="error")
    def error_text(self, file: File) -> str:
        return file.error_text or "–"

    @admin.display(description="results")
    def results(self, file: File) -> str:
        counts = [
            (Anomaly, file.anomalies.count(), "anomalies", "file__id__exact"),
            (
                RecordError,
                file.record_errors.count(),
                "validation errors",
                "file__id__exact",
            ),
            (Event, Event.objects.filter(file_id=file.pk).count(), "events", "file_id"),
        ]
        return format_html_join(
            " · ",
            "{}",
            (
                (changelist_link(model, f"{count} {label}", **{key: file.pk}),)
                for model, count, label, key in counts
            ),
        )

    @admin.action(description="Process selected files again")
    def reprocess(self, request: HttpRequest, queryset: QuerySet[File]) -> None:
        for file in queryset:
            with contextlib.suppress(FileGone):
                services.file_reprocess(file=file, by=request.user)
        self.message_user(
            request, f"{queryset.count()} file(s) queued again.", messages.SUCCESS
        )

    # Renaming goes through the service: it writes the changed fields only, never the
    # whole row as the form read it (a worker may have written since).
    def save_model(self, request: HttpRequest, obj: File, form, change: bool) -> None:
        details = {name: form.cleaned_data[name] for name in form.changed_data}
        if details:
            try:
                services.file_update(file=obj, by=request.user, **details)
            except FileGone:
                self.message_user(request, "The file was deleted.", messages.WARNING)

    # Deleting goes through the service, as from the API: the stored bytes go too,
    # and the owner's pages hear of it.
    def delete_model(self, request: HttpRequest, obj: File) -> None:
        with contextlib.suppress(FileGone):
            services.file_delete(file=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[File]) -> None:
        for file in queryset:
            with contextlib.suppress(FileGone):
                services.file_delete(file=file)


@admin.register(Anomaly)
class AnomalyAdmin(ReadOnlyAdmin):
    list_display = ["file_name", *stored_fields(Anomaly, without=("id", "file"))]
    list_filter = ["metric"]
    search_fields = ["server", "file__name"]
    list_select_related = ["file"]
    raw_id_fields = ["file"]

    @admin.display(description="file", ordering="file")
    def file_name(self, anomaly: Anomaly) -> str:
        return format_html("{} ({})", file_link(anomaly.file_id), anomaly.file.name)


@admin.register(RecordError)
class RecordErrorAdmin(ReadOnlyAdmin):
    list_display = ["file_name", *stored_fields(RecordError, without=("id", "file"))]
    search_fields = ["pointer", "message", "file__name"]
    list_select_related = ["file"]
    raw_id_fields = ["file"]

    @admin.display(description="file", ordering="file")
    def file_name(self, error: RecordError) -> str:
        return format_html("{} ({})", file_link(error.file_id), error.file.name)


@admin.register(AnomalyRule)
class AnomalyRuleAdmin(admin.ModelAdmin):
    list_display = ["metric", "min_value", "max_value", "enabled", "updated_at"]
    list_editable = ["min_value", "max_value", "enabled"]
    list_filter = ["enabled"]


@admin.register(Upload)
class UploadAdmin(ReadOnlyAdmin):
    """Resumable uploads: staff see them and may delete one (its bytes go with the
    periodic job, or at once through `DELETE /api/uploads/ID/`)."""

    list_display = ["filename", "owner", "offset", "length", "file_id", "expires"]
    list_filter = ["expires"]
    search_fields = ["filename", "owner__username", "=id"]
    list_select_related = ["owner"]
    readonly_fields = stored_fields(Upload)
