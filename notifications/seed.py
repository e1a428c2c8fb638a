"""The seed system's WebSocket protocol: only the messages its app can parse.

The seed's Flutter app (`InvincibleSihag/dwellFi_Assignment`) opens
`/notification/events?user_id=...` once and never sends. Its file page takes every
message whose `file_id` is the open file and shows "Unknown event type" for any
`event_name` but `FileProcessed` (whose `file` it parses as a seed file) and
`FileProcessError` (`file_anomaly.file_id` an int, `data` a string); its home page
reads `Notification` with `user_id`, `title` and `description` as strings. So a
connection that names `user_id` gets the canonical events translated to exactly
those three, and nothing else: no snapshot, progress, queued, processing, deleted
or pong. Identity still comes only from the token or the session; the value of
`user_id` is never read.
"""

from typing import Any
from urllib.parse import parse_qs

from django.contrib.auth.models import AbstractBaseUser

from .filedata import seed_files

SEED_PARAMETER = "user_id"
# The canonical event types the seed app understands, by the name it knows them by.
SEED_EVENT_NAMES = {
    "file.processed": "FileProcessed",
    "file.anomalies": "FileProcessError",
    "file.failed": "FileProcessError",
    "notification": "Notification",
}


def speaks_seed(query_string: str) -> bool:
    """Whether the query names the seed app's own parameter, whatever its value."""
    return SEED_PARAMETER in parse_qs(query_string, keep_blank_values=True)


def is_seed_event(message: dict[str, Any]) -> bool:
    """Whether the seed protocol has a message for this canonical one."""
    return message.get("type") in SEED_EVENT_NAMES


def seed_messages(
    messages: list[dict[str, Any]], *, user: AbstractBaseUser
) -> list[dict[str, Any]]:
    """The seed's messages for canonical ones, in order; the others are left out.

    A `FileProcessed` carries the file as it is now, in the seed's shape, read
    from the database (one query for all of them) rather than stored in every
    event; without its records, which the app's file page fetches itself. One
    whose file was deleted since is left out: the app has nothing to show for it.
    Each keeps its `id`, so a client can resume with `?after=`.
    """
    wanted = [message for message in messages if is_seed_event(message)]
    processed = {m["file_id"] for m in wanted if m["type"] == "file.processed"}
    files = {}
    if processed:
        files = seed_files(user=user, ids=processed)
    translated = []
    for message in wanted:
        if message["type"] == "file.processed" and message["file_id"] not in files:
            continue
        translated.append(_seed_message(message, files))
    return translated


def _seed_message(
    message: dict[str, Any], files: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """One message with exactly the fields of the seed's event schema (and `id`)."""
    seed = {
        "id": message["id"],
        "event_name": SEED_EVENT_NAMES[message["type"]],
        "is_major": message["is_major"],
    }
    if message["type"] == "notification":
        # No `file_id`: the open file page would take it for an unknown event.
        return {
            **seed,
            "user_id": str(message["user_id"]),
            "title": message["title"],
            "description": message["description"],
        }
    seed.update(file_id=message["file_id"], status_message=message["status_message"])
    if message["type"] == "file.processed":
        return {**seed, "file": files[message["file_id"]]}
    return {**seed, "file_anomaly": message["file_anomaly"]}
