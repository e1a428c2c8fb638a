"""Staff view of the durable events."""

from django.contrib import admin

from .models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "seq", "type", "file_id", "created_at"]
    list_filter = ["type", "created_at"]
    search_fields = ["user__username", "=file_id"]
    list_select_related = ["user"]
    readonly_fields = ["user", "seq", "type", "file_id", "message", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
