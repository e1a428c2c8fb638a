"""A file's events: what each one says, recorded with the change it reports.

Every event about a file carries its status, progress, a status message and the
bounded file resource as the change leaves it (`notifications.publisher.publish`
stamps the resource with the last event's id, which the caller writes to the row).
`file.progress` is the exception: live only, tiny, a few a second.
"""

import time
from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings

from notifications.publisher import build_message, publish, send_live

from . import engine, selectors
from .models import File
from .serializers import file_resource
from .sink import ANOMALY_TEXT_LIMIT

STATUS_MESSAGES = {
    "file.queued": "File queued for processing",
    "file.processing": "Processing started",
    "file.deleted": "File deleted",
}


# An event made before it is published: (type, fields, the file resource).
FileEvent = tuple[str, dict[str, Any], dict[str, Any]]


def file_event_now(file: File, event_type: str) -> FileEvent:
    """An event about the file as it is now, to publish later in the transaction
    (`file_events_publish`'s `earlier`), after the file changed again."""
    return event_type, _status_fields(file, event_type), file_resource(file)


def file_events_publish(
    file: File,
    events: Sequence[tuple[str, dict]],
    *,
    earlier: Sequence[FileEvent] = (),
    reserved: int | None = None,
) -> int:
    """Record `events` ((type, extra fields) pairs) about the file as it is now, in
    the current transaction, after the `earlier` ones; sent after commit. The
    last one's id (`reserved`: as `publish`)."""
    resource = file_resource(file)
    return publish(
        user_id=file.owner_id,
        file_id=file.pk,
        events=[
            *((event_type, fields) for event_type, fields, _ in earlier),
            *(
                (event_type, {**_status_fields(file, event_type), **fields})
                for event_type, fields in events
            ),
        ],
        resource=[*(made for *_, made in earlier), *[resource] * len(events)]
        if earlier
        else resource,
        reserved=reserved,
    )


def _status_fields(file: File, event_type: str) -> dict[str, Any]:
    return {
        "status": file.status,
        "progress": file.progress,
        "status_message": STATUS_MESSAGES.get(event_type) or outcome_message(file),
    }


def outcome_message(file: File) -> str:
    if file.status == File.Status.FAILED:
        return f"Processing failed: {file.error_text}"
    if file.status == File.Status.PROCESSED:
        return (
            f"File processed: {file.record_count} records, "
            f"{file.anomaly_count} anomalies, "
            f"{file.invalid_record_count} invalid records"
        )
    return f"Processing: {round(file.progress * 100)}%"


def outcome_events(
    file: File, first_anomalies: list[Any] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The final events: the outcome, the anomalies if any, then a notification.

    `first_anomalies` are the file's first anomalies, when the caller has them.
    """
    if file.status == File.Status.FAILED:
        events = [
            (
                "file.failed",
                {"file_anomaly": {"file_id": file.pk, "data": file.error_text}},
            )
        ]
    else:
        events = [("file.processed", {})]
        if file.anomaly_count:
            if first_anomalies is None:
                first_anomalies = selectors.anomaly_list_head(
                    file=file, limit=ANOMALY_TEXT_LIMIT
                )
            text = engine.anomaly_text(
                first_anomalies[:ANOMALY_TEXT_LIMIT],
                limit=ANOMALY_TEXT_LIMIT,
                total=file.anomaly_count,
            )
            events.append(
                ("file.anomalies", {"file_anomaly": {"file_id": file.pk, "data": text}})
            )
    title = "File processed" if file.status == File.Status.PROCESSED else "File failed"
    notification = {
        "title": f"{title}: {file.name}",
        "description": outcome_message(file),
        "user_id": file.owner_id,
    }
    return [*events, ("notification", notification)]


def progress_reporter(
    file: File, *, stopped: Callable[[], bool]
) -> Callable[[float], None]:
    """Live `file.progress` events, a few a second at most, until `stopped()`.

    Each is tiny: status, progress, the status message, attempts and the file's
    last durable event id (so a client can tell a stale one), no file resource.
    """
    interval = settings.DWELLFI_PROGRESS_INTERVAL
    last_sent = time.monotonic()

    def report(fraction: float) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if now - last_sent < interval or fraction >= 1.0 or stopped():
            return
        last_sent = now
        file.progress = round(min(max(fraction, 0.0), 0.99), 4)
        fields = {
            "status": file.status,
            "progress": file.progress,
            "status_message": outcome_message(file),
            "attempts": file.attempts,
            "last_event_id": file.last_event_id,
        }
        send_live(
            file.owner_id,
            build_message("file.progress", file_id=file.pk, fields=fields),
        )

    return report
