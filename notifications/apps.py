"""Notifications app: durable events and the WebSocket that delivers them."""

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
