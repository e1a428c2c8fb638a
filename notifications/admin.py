"""Staff view of the durable events."""

import json

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from .filedata import file_exists
from .models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "seq", "type", "file", "created_at"]
    list_filter = ["type", "created_at"]
    search_fields = ["user__username", "=file_id"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    fields = ["user", "seq", "type", "file", "created_at", "pretty_message"]
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        return super().get_queryset(request).annotate(file_exists=file_exists())

    @admin.display(description="file", ordering="file_id")
    def file(self, event: Event) -> str:
        """The file's admin page; a deleted file's id stays as plain text."""
        if event.file_id is None:
            return "–"
        if not event.file_exists:
            return f"{event.file_id} (deleted)"
        url = reverse("admin:files_file_change", args=[event.file_id])
        return format_html('<a href="{}">file {}</a>', url, event.file_id)

    @admin.display(description="message")
    def pretty_message(self, event: Event) -> str:
        return format_html(
            "<pre>{}</pre>", json.dumps(event.message, indent=2, ensure_ascii=False)
        )
