"""WebSocket routes; the path is the seed system's."""

from django.urls import re_path

from .consumers import EventConsumer

websocket_urlpatterns = [
    re_path(r"^notification/events/?$", EventConsumer.as_asgi()),
]
