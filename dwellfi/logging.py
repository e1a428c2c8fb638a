"""Structured logs: one JSON object per line, stamped with request, task and file ids.

Follow one upload from web to worker by its request id:

- `RequestIdMiddleware` takes the request's `X-Request-ID` (or makes one), keeps it
  in a context variable for the request, and returns it in the response header.
- Every task sent while it is set carries it in its message headers
  (`before_task_publish`); in the worker, `task_prerun` sets it again, with the task
  id and the file id, and `task_postrun` logs how the task ended.
- `ContextFilter` stamps `request_id`, `task_id` and `file_id` on every record, and
  `JsonFormatter` writes each record as one line of JSON.
- `RefusalFilter` keeps Django's refusals of malformed requests to one line each.
"""

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_postrun,
    task_prerun,
)
from django.http import HttpRequest, HttpResponse

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept only if it is short and plain: it ends up in every line.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PROCESS_TASK = "files.tasks.process_file"

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
task_id_var: ContextVar[str | None] = ContextVar("task_id", default=None)
file_id_var: ContextVar[int | None] = ContextVar("file_id", default=None)

logger = logging.getLogger("dwellfi.tasks")

# The attributes every LogRecord has; anything else was passed in `extra`.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "request_id", "task_id", "file_id"}


def new_request_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex


# --- web ---------------------------------------------------------------------------


class RequestIdMiddleware:
    """Give each request an id, in the logs of everything it causes and its response."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        token = request_id_var.set(self._request_id(request))
        try:
            return self._stamp(self.get_response(request))
        finally:
            request_id_var.reset(token)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        token = request_id_var.set(self._request_id(request))
        try:
            return self._stamp(await self.get_response(request))
        finally:
            request_id_var.reset(token)

    @staticmethod
    def _request_id(request: HttpRequest) -> str:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        chosen = incoming if VALID_REQUEST_ID.fullmatch(incoming) else new_request_id()
        # Also on the request: Django logs 4xx/5xx answers (`django.request`) after
        # the middleware has returned, with the request attached to the record.
        request.request_id = chosen
        return chosen

    @staticmethod
    def _stamp(response: HttpResponse) -> HttpResponse:
        response[REQUEST_ID_HEADER] = request_id_var.get()
        return response


# --- records -----------------------------------------------------------------------


class ContextFilter(logging.Filter):
    """Stamp the current request, task and file ids on every record (None if unset).

    Ids given explicitly in `extra` win over the context; a record that carries its
    request (Django's `django.request` lines) takes that request's id.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (
            ("request_id", request_id_var),
            ("task_id", task_id_var),
            ("file_id", file_id_var),
        ):
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        if record.request_id is None:
            record.request_id = getattr(
                getattr(record, "request", None), "request_id", None
            )
        return True


class RefusalFilter(logging.Filter):
    """Django's refusals of malformed requests (`django.security.*`), without the
    traceback Django attaches: the client's error, not the code's, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security."):
            record.exc_info = None
            record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ids, the extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "task_id": getattr(record, "task_id", None),
            "file_id": getattr(record, "file_id", None),
        }
        entry.update(
            (key, value)
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


# --- Celery ------------------------------------------------------------------------


@setup_logging.connect
def _keep_django_logging(**kwargs: Any) -> None:
    """Workers log through Django's LOGGING too, instead of Celery's own setup."""


@before_task_publish.connect
def _send_request_id(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Carry the current request id to the worker in the task message's headers."""
    if headers is not None and request_id_var.get() and "request_id" not in headers:
        headers["request_id"] = request_id_var.get()


_started: dict[str, float] = {}


@task_prerun.connect
def _task_started(task_id: str, task, args=(), **kwargs: Any) -> None:
    """In the worker: the message's request id, the task id and the file id."""
    request = task.request
    sent_with = getattr(request, "request_id", None) or (request.headers or {}).get(
        "request_id"
    )
    task_id_var.set(task_id)
    request_id_var.set(sent_with)
    file_id_var.set(args[0] if task.name == PROCESS_TASK and args else None)
    _started[task_id] = time.monotonic()
    logger.info("task started", extra={"task": task.name})


@task_postrun.connect
def _task_finished(task_id: str, task, retval=None, state=None, **kwargs: Any) -> None:
    """In the worker: how the task ended, how long it took, what it found."""
    started = _started.pop(task_id, None)
    details: dict[str, Any] = {"task": task.name, "state": state}
    if started is not None:
        details["duration"] = round(time.monotonic() - started, 3)
    if task.name == PROCESS_TASK:
        details.update(_file_outcome(file_id_var.get()))
    logger.info("task finished", extra=details)
    task_id_var.set(None)
    request_id_var.set(None)
    file_id_var.set(None)


def _file_outcome(pk: int | None) -> dict[str, Any]:
    """The processed file's status and counts, for the task's last line."""
    from files.models import File

    try:
        row = (
            File.objects.filter(pk=pk)
            .values("status", "record_count", "invalid_record_count", "anomaly_count")
            .first()
        )
    except Exception:  # the database may be what failed the task
        logger.warning("could not read file %s after its task", pk, exc_info=True)
        return {}
    return row or {}
