"""The one way events leave the service: recorded durably, then sent after commit."""

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction

from .models import Event

logger = logging.getLogger(__name__)

# The seed system's names for each event type, for its clients.
EVENT_NAMES = {
    "file.queued": "FileQueued",
    "file.processing": "FileProcessing",
    "file.progress": "FileProgress",
    "file.processed": "FileProcessed",
    "file.anomalies": "FileProcessError",
    "file.failed": "FileProcessError",
    "file.deleted": "FileDeleted",
    "notification": "Notification",
}
MAJOR_TYPES = {"file.processed", "file.anomalies", "file.failed", "notification"}


def user_group(user_id: int) -> str:
    """The channel-layer group every connection of one user joins."""
    return f"user_{user_id}"


def build_message(
    event_type: str, *, file_id: int | None, fields: dict[str, Any]
) -> dict[str, Any]:
    """A message in the shape both new clients and the seed's clients read."""
    return {
        "type": event_type,
        "file_id": file_id,
        "event_name": EVENT_NAMES[event_type],
        "is_major": event_type in MAJOR_TYPES,
        **fields,
    }


def _next_seq(user_id: int) -> int:
    # The upsert holds the cursor row lock until commit: one writer per user at once.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO notifications_eventcursor (user_id, last_seq) VALUES (%s, 1) "
            "ON CONFLICT (user_id) DO UPDATE "
            "SET last_seq = notifications_eventcursor.last_seq + 1 "
            "RETURNING last_seq",
            [user_id],
        )
        return cursor.fetchone()[0]


def reserve_event_id(user_id: int) -> int:
    """Take the user's next cursor value; call inside the transaction that publishes."""
    if not connection.in_atomic_block:
        raise RuntimeError("events are recorded inside the transaction they report")
    return _next_seq(user_id)


def publish_event(
    *,
    user_id: int,
    event_type: str,
    file_id: int | None,
    fields: dict[str, Any],
    event_id: int | None = None,
) -> Event:
    """Record a durable event in the current transaction and send it once it commits.

    `event_id` is a value from `reserve_event_id` when the caller had to know it
    first (to stamp it on the row the event describes).
    """
    seq = event_id if event_id is not None else reserve_event_id(user_id)
    message = {"id": seq, **build_message(event_type, file_id=file_id, fields=fields)}
    event = Event.objects.create(
        user_id=user_id, seq=seq, type=event_type, file_id=file_id, message=message
    )
    transaction.on_commit(lambda: send_live(user_id, message))
    return event


def send_live(user_id: int, message: dict[str, Any]) -> None:
    """Send a message to the user's connections now; a failure is logged, never raised.

    The channel layer is at-most-once: the durable copy is what clients catch up from.
    """
    layer = get_channel_layer()
    try:
        async_to_sync(layer.group_send)(
            user_group(user_id), {"type": "event.message", "message": message}
        )
    except Exception:
        logger.warning(
            "could not send %s to user %s", message.get("type"), user_id, exc_info=True
        )
