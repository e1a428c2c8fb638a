"""Celery tasks: thin, idempotent, keyed by file id."""

import logging
import time
from typing import Any

import psycopg
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerError

from . import leftovers, resumable, services
from .exceptions import Busy

logger = logging.getLogger(__name__)

# Failures worth another try: the database or the broker went away for a moment, or
# another session still holds the file. psycopg's own errors come from the COPY,
# which runs on the raw cursor outside Django's error wrapping.
TRANSIENT = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    BrokerError,
    ConnectionError,
    Busy,
)


# No result row for a file's task that ends: the file's row is the outcome, and
# the row cost about 2 ms a task (in the worker's own transaction). Errors and
# retries are still stored (CELERY_TASK_STORE_ERRORS_EVEN_IF_IGNORED), so the
# admin's task results list what went wrong.
@shared_task(bind=True, max_retries=5, acks_late=True, ignore_result=True)
def process_file(self, file_id: int) -> str:
    """Process one file; the message carries its id, never its contents.

    Logs "task started" and "task finished" (with the outcome, the counts and how
    long it took), each stamped with the request id that queued it.
    """
    logger.info("task started")
    started = time.monotonic()
    outcome = _process(self, file_id)
    logger.info(
        "task finished",
        extra={**outcome, "duration": round(time.monotonic() - started, 3)},
    )
    return outcome["status"]


def _process(task, file_id: int) -> dict[str, Any]:
    """Run the service; the outcome for the log: status and, once final, counts."""
    try:
        file = services.file_process(
            file_id=file_id,
            task_id=task.request.id,
            first_delivery=first_delivery(task.request),
        )
    except SoftTimeLimitExceeded:
        limit = settings.CELERY_TASK_SOFT_TIME_LIMIT
        services.file_fail(
            file_id=file_id,
            task_id=task.request.id,
            error={"message": f"Processing took longer than {limit} seconds"},
        )
        return {"status": "failed"}
    except TRANSIENT as exc:
        countdown = min(2**task.request.retries, 60)
        logger.warning(
            "file %s: transient error, retry in %ss: %s", file_id, countdown, exc
        )
        raise task.retry(exc=exc, countdown=countdown) from exc
    except Exception as exc:
        # A defect, not the file's fault: say so on the file instead of leaving it
        # `processing` until recovery notices.
        logger.exception("file %s: processing crashed", file_id)
        services.file_fail(
            file_id=file_id,
            task_id=task.request.id,
            error={
                "message": f"Internal error while processing ({type(exc).__name__})"
            },
        )
        return {"status": "failed"}
    if file is None:
        return {"status": "skipped"}
    return {
        "status": file.status,
        "record_count": file.record_count,
        "invalid_record_count": file.invalid_record_count,
        "anomaly_count": file.anomaly_count,
    }


def first_delivery(request) -> bool:
    """Whether the broker delivers this task's message for the first time.

    Not a retry, and not a message the broker gave back: one whose worker died
    or was shut down comes back marked `redelivered` (kombu sets it when it
    restores an unacknowledged message). A task run eagerly has no delivery.
    """
    delivery = request.delivery_info
    return (
        delivery is not None
        and not delivery.get("redelivered")
        and not request.retries
        and not request.is_eager
    )


@shared_task
def recover_stuck_files() -> dict[str, int]:
    """Periodic: send again lost tasks, requeue lost runs, finish failed purges."""
    return services.files_recover_stuck()


@shared_task
def sweep_leftovers() -> dict[str, int]:
    """Periodic: remove stored bytes no file refers to, and results no file has."""
    return {
        "stored_files": leftovers.files_sweep_leftovers(),
        "result_rows": leftovers.results_sweep_orphans(),
    }


@shared_task
def expire_uploads() -> int:
    """Periodic: delete resumable uploads past their expiry, and their bytes."""
    return resumable.uploads_expire()
