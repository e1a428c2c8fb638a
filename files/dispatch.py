"""Sending a file's processing task; telling a task the broker holds from a lost one."""

import logging
import uuid
from collections.abc import Iterable

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from .models import File

logger = logging.getLogger(__name__)

PROCESS_TASK = "files.tasks.process_file"
# Marks a task the broker accepted; lost with the broker's queue if Redis restarts
# without persistence, which is how the recovery job tells waiting from lost.
ENQUEUED_MARKER_SECONDS = 7 * 24 * 3600


def new_task_id() -> str:
    return str(uuid.uuid4())


def enqueue_on_commit(file: File) -> None:
    """Send the file's task once the transaction that queued it commits."""
    file_id, task_id, size = file.pk, file.task_id, file.size
    transaction.on_commit(lambda: enqueue(file_id=file_id, task_id=task_id, size=size))


def enqueue(*, file_id: int, task_id: str, size: int) -> bool:
    """Send the processing task; when the broker is down the row stays queued.

    A file of `size` DWELLFI_LARGE_FILE_BYTES or more goes to the large-file queue,
    so that small files never wait behind large ones (settings).

    The periodic recovery job sends it again later, so a failure here is logged,
    never raised into the upload request. One quick retry covers a pooled connection
    that went stale (Redis restarted); the broker's short connect and socket timeouts
    (settings) bound the wait when Redis is unreachable to a couple of seconds.
    """
    try:
        current_app.send_task(
            PROCESS_TASK,
            args=[file_id],
            task_id=task_id,
            queue=processing_queue(size),
            retry=True,
            retry_policy={
                "max_retries": 1,
                "interval_start": 0,
                "interval_step": 0.2,
                "interval_max": 0.2,
            },
        )
    except Exception:
        logger.warning(
            "could not enqueue file %s; recovery will retry", file_id, exc_info=True
        )
        return False
    cache.set(enqueued_marker(task_id), 1, ENQUEUED_MARKER_SECONDS)
    return True


def forget_enqueued(task_id: str) -> None:
    """Drop the task's enqueued marker: the broker no longer holds its message.

    Called when a run that commits nothing before its outcome takes the message:
    should the message be acknowledged without an outcome (the hard time limit),
    the recovery job finds the file queued with no marker and sends it again.
    """
    cache.delete(enqueued_marker(task_id))


def processing_queue(size: int) -> str:
    """The queue that processes a file of `size` bytes."""
    large = settings.DWELLFI_LARGE_FILE_BYTES
    if large and size >= large:
        return settings.DWELLFI_LARGE_FILE_QUEUE
    return settings.CELERY_TASK_DEFAULT_QUEUE


def enqueued_marker(task_id: str) -> str:
    return f"enqueued:{task_id}"


def accepted(task_ids: Iterable[str]) -> set[str]:
    """The tasks among `task_ids` the broker accepted (and still may hold)."""
    task_ids = list(task_ids)
    markers = cache.get_many([enqueued_marker(task_id) for task_id in task_ids])
    return {task_id for task_id in task_ids if enqueued_marker(task_id) in markers}
