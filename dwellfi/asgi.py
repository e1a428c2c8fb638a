"""ASGI entry point: Django for HTTP, Channels for the notification WebSocket.

The application daphne serves defaults to production: unless DJANGO_DEBUG says
otherwise it is off, so a secret key and allowed hosts are required (`manage.py`
keeps the settings' development default; `make run` and `make test` set
DJANGO_DEBUG=1 for the processes they start).
"""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dwellfi.settings")
if not settings.configured:
    # This module starts the process (daphne). Under `manage.py runserver` or the
    # tests the settings are already loaded, and keep the mode they were loaded in.
    os.environ.setdefault("DJANGO_DEBUG", "0")

# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from dwellfi import webserver  # noqa: E402
from dwellfi.backpressure import with_backpressure  # noqa: E402
from notifications.routing import websocket_urlpatterns  # noqa: E402

webserver.install()  # daphne leaves request bodies to Django alone

application = ProtocolTypeRouter(
    {
        "http": with_backpressure(django_asgi_app),
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)
