"""Staff views of files, their results and the anomaly rules."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from . import services
from .models import Anomaly, AnomalyRule, File, RecordError


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
        "invalid_record_count",
        "anomaly_count",
        "attempts",
        "created_at",
        "duration",
    ]
    list_filter = ["status", "kind", "owner", "created_at"]
    search_fields = ["name", "sha256", "task_id", "owner__username"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    actions = ["reprocess"]
    readonly_fields = [
        "owner",
        "updated_by",
        "content",
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
        "last_event_id",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "results",
    ]
    fields = ["name", "declared_type", *readonly_fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="duration")
    def duration(self, file: File) -> str:
        if file.started_at and file.finished_at:
            return f"{(file.finished_at - file.started_at).total_seconds():.2f} s"
        return "–"

    @admin.display(description="results")
    def results(self, file: File) -> str:
        return format_html(
            '<a href="{}?file__id__exact={}">anomalies</a> · '
            '<a href="{}?file__id__exact={}">validation errors</a> · '
            '<a href="{}?file_id={}">events</a>',
            reverse("admin:files_anomaly_changelist"),
            file.pk,
            reverse("admin:files_recorderror_changelist"),
            file.pk,
            reverse("admin:notifications_event_changelist"),
            file.pk,
        )

    @admin.action(description="Process selected files again")
    def reprocess(self, request: HttpRequest, queryset: QuerySet[File]) -> None:
        for file in queryset:
            services.file_reprocess(file=file, by=request.user)
        self.message_user(
            request, f"{queryset.count()} file(s) queued again.", messages.SUCCESS
        )


@admin.register(Anomaly)
class AnomalyAdmin(ReadOnlyAdmin):
    list_display = [
        "file",
        "record_index",
        "server",
        "timestamp",
        "metric",
        "value",
        "min_value",
        "max_value",
    ]
    list_filter = ["metric"]
    search_fields = ["server", "file__name"]
    list_select_related = ["file"]
    raw_id_fields = ["file"]


@admin.register(RecordError)
class RecordErrorAdmin(ReadOnlyAdmin):
    list_display = ["file", "pointer", "message"]
    search_fields = ["pointer", "message", "file__name"]
    list_select_related = ["file"]
    raw_id_fields = ["file"]


@admin.register(AnomalyRule)
class AnomalyRuleAdmin(admin.ModelAdmin):
    list_display = ["metric", "min_value", "max_value", "enabled", "updated_at"]
    list_editable = ["min_value", "max_value", "enabled"]
    list_filter = ["enabled"]
