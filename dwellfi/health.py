"""`/healthz`: whether this process can reach PostgreSQL, Redis and the Celery broker.

Answers JSON, 200 when every check passes and 503 otherwise, for load balancers,
container health checks and people. No authentication; nothing secret in it.
"""

from collections.abc import Callable

from celery import current_app
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from redis import Redis

TIMEOUT_SECONDS = 2


def check_database() -> None:
    """A round trip to the database."""
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_redis() -> None:
    """A PING to Redis (the channel layer, the cache and the upload throttle)."""
    client = Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=TIMEOUT_SECONDS,
        socket_connect_timeout=TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    finally:
        client.close()


def check_broker() -> None:
    """A connection to the Celery broker, as the upload's enqueue makes one."""
    short = {
        "socket_timeout": TIMEOUT_SECONDS,
        "socket_connect_timeout": TIMEOUT_SECONDS,
    }
    with current_app.connection_for_write(
        url=settings.CELERY_BROKER_URL,
        connect_timeout=TIMEOUT_SECONDS,
        transport_options=short,
    ) as broker:
        broker.ensure_connection(
            max_retries=1, interval_start=0, timeout=TIMEOUT_SECONDS
        )


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "redis": check_redis,
    "broker": check_broker,
}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Each check as `"ok"` or `"error: <kind>"`, and the overall `status`."""
    results = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure is the answer, not an error
            results[name] = f"error: {exc.__class__.__name__}"
    healthy = all(value == "ok" for value in results.values())
    return JsonResponse(
        {"status": "ok" if healthy else "error", **results},
        status=200 if healthy else 503,
    )
