"""Celery tasks: thin, idempotent, keyed by file id."""

import logging

import psycopg
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerError

from . import services
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


@shared_task(bind=True, max_retries=5, acks_late=True)
def process_file(self, file_id: int) -> str:
    """Process one file; the message carries its id, never its contents."""
    try:
        file = services.file_process(file_id=file_id, task_id=self.request.id)
    except SoftTimeLimitExceeded:
        limit = settings.CELERY_TASK_SOFT_TIME_LIMIT
        services.file_fail(
            file_id=file_id,
            task_id=self.request.id,
            error={"message": f"Processing took longer than {limit} seconds"},
        )
        return "failed"
    except TRANSIENT as exc:
        countdown = min(2**self.request.retries, 60)
        logger.warning(
            "file %s: transient error, retry in %ss: %s", file_id, countdown, exc
        )
        raise self.retry(exc=exc, countdown=countdown) from exc
    except Exception as exc:
        # A defect, not the file's fault: say so on the file instead of leaving it
        # `processing` until recovery notices.
        logger.exception("file %s: processing crashed", file_id)
        services.file_fail(
            file_id=file_id,
            task_id=self.request.id,
            error={
                "message": f"Internal error while processing ({type(exc).__name__})"
            },
        )
        return "failed"
    return file.status if file is not None else "skipped"


@shared_task
def recover_stuck_files() -> dict[str, int]:
    """Periodic: send again lost tasks, requeue lost runs, finish failed purges."""
    return services.files_recover_stuck()


@shared_task
def sweep_leftovers() -> int:
    """Periodic: remove stored bytes no file refers to."""
    return services.files_sweep_leftovers()
