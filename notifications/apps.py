"""Notifications app: durable events and the WebSocket that delivers them."""

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the handlers)
