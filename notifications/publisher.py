"""The one way events leave the service: recorded durably, then sent after commit."""

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
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


def publish(
    *,
    user_id: int,
    file_id: int | None,
    events: Sequence[tuple[str, dict[str, Any]]],
    resource: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    reserved: int | None = None,
) -> int:
    """Record durable events in the current transaction and send them once it
    commits; the last one's id. The one way an event leaves the service.

    `events` are (type, fields) pairs, in order. They take the user's next cursor
    values, holding the user's cursor row until commit: one writer per user at
    once, so events commit in id order. `resource`, when given, is the file as
    these events leave it: each carries it as `file`, its `last_event_id` the
    last of these ids (the caller writes the same to the file's row). A list of
    resources gives each event its own (the file as that event left it): each
    resource is stamped with the id of the last event that carries it.

    `reserved`: the last of the ids `events_lock(reserve=len(events))` took for
    these events earlier in the transaction.
    """
    last = reserved if reserved is not None else _reserve(user_id, len(events))
    ids = range(last - len(events) + 1, last + 1)
    if resource is None or isinstance(resource, dict):
        resources = [resource] * len(events)
    else:
        resources = list(resource)
    stamped = {
        id(made): {**made, "last_event_id": seq}
        for seq, made in zip(ids, resources, strict=True)
        if made is not None
    }
    messages = []
    for seq, (event_type, fields), made in zip(ids, events, resources, strict=True):
        message = {
            "id": seq,
            **build_message(event_type, file_id=file_id, fields=fields),
        }
        if made is not None:
            message["file"] = stamped[id(made)]
        messages.append(message)
    Event.objects.bulk_create(
        [
            Event(
                user_id=user_id,
                seq=message["id"],
                type=message["type"],
                file_id=file_id,
                message=message,
            )
            for message in messages
        ]
    )

    def send() -> None:
        for message in messages:
            send_live(user_id, message)

    transaction.on_commit(send)
    return last


def events_lock(user_id: int, *, reserve: int = 0) -> int:
    """Hold the user's event cursor row until the transaction ends, as publishing
    an event does: what makes a user's writers take turns (the quota checks rely on
    it). Call inside the transaction.

    With `reserve`, also take the ids of that many events the transaction will
    publish (`publish(reserved=...)`), in the same statement; the last one.
    """
    return _reserve(user_id, reserve)


def _reserve(user_id: int, count: int) -> int:
    """Take the user's next `count` cursor values; the last one."""
    if not connection.in_atomic_block:
        raise RuntimeError("events are recorded inside the transaction they report")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO notifications_eventcursor (user_id, last_seq) VALUES (%s, %s) "
            "ON CONFLICT (user_id) DO UPDATE "
            "SET last_seq = notifications_eventcursor.last_seq + EXCLUDED.last_seq "
            "RETURNING last_seq",
            [user_id, count],
        )
        return cursor.fetchone()[0]


def events_forget_file(*, file_id: int) -> None:
    """Delete the durable events about a file; call in the transaction deleting it."""
    Event.objects.filter(file_id=file_id).delete()


SEND_TIMEOUT = 5.0


class _Sender:
    """An event loop on a thread of its own, for sending from sync code that has none.

    `async_to_sync` from a thread without an event loop (a Celery worker) starts a
    new loop per call, and the channel layer opens a new Redis connection per loop:
    about 3 ms a message. One loop per process keeps one connection. Messages are
    sent one at a time, in the order they are given.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(
            target=self.loop.run_forever, name="channel-layer-sender", daemon=True
        ).start()

    def send(self, group: str, event: dict[str, Any]) -> None:
        layer = get_channel_layer()
        future = asyncio.run_coroutine_threadsafe(
            layer.group_send(group, event), self.loop
        )
        try:
            future.result(SEND_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise


_sender: _Sender | None = None


def start_sender() -> None:
    """Send from this process through one long-lived event loop (Celery workers).

    Call it in the process that sends, after any fork. Code running under the ASGI
    server does not need it: there `async_to_sync` uses the server's own loop.
    """
    global _sender
    if _sender is None or _sender.pid != os.getpid():
        _sender = _Sender()


def send_live(user_id: int, message: dict[str, Any]) -> None:
    """Send a message to the user's connections now; a failure is logged, never raised.

    The channel layer is at-most-once: the durable copy is what clients catch up from.
    """
    send_to_user(
        user_id, {"type": "event.message", "message": message}, what=message.get("type")
    )


def send_to_user(user_id: int, event: dict[str, Any], *, what: str = "") -> None:
    """Send a channel-layer event to the user's connections from sync code; a failure
    is logged, never raised."""
    group = user_group(user_id)
    try:
        if _sender is not None and _sender.pid == os.getpid():
            _sender.send(group, event)
        else:
            async_to_sync(get_channel_layer().group_send)(group, event)
    except Exception:
        logger.warning(
            "could not send %s to user %s",
            what or event["type"],
            user_id,
            exc_info=True,
        )
