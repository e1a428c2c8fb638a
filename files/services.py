"""Writes: storing uploads, processing them, and reporting every change as an event."""

import functools
import hashlib
import logging
import sys
import time
import unicodedata
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from notifications.publisher import (
    build_message,
    publish_event,
    publish_events,
    reserve_event_ids,
    send_live,
)

from . import engine
from .models import Anomaly, File, MetricRecord, RecordError
from .selectors import rules_active
from .serializers import file_resource

logger = logging.getLogger(__name__)

PROCESS_TASK = "files.tasks.process_file"
# What a JSON text can start with, after optional whitespace and a UTF-8 BOM.
JSON_START = frozenset(b'{["-0123456789tfn')
ANOMALY_TEXT_LIMIT = 20
# Files larger than about one batch of records are written by a pipelined sink.
PIPELINE_FROM = 1_000_000
STATUS_MESSAGES = {
    "file.queued": "File queued for processing",
    "file.processing": "Processing started",
    "file.deleted": "File deleted",
}


class Superseded(Exception):
    """The file changed hands (replaced, reprocessed or deleted) during processing."""


class Busy(Exception):
    """Another connection holds this file's processing lock: try again shortly.

    Either a second delivery of a task that is still running, or a killed worker
    whose database session has not been ended yet.
    """


# --- uploads -----------------------------------------------------------------------


def _check_looks_like_json(upload: UploadedFile) -> None:
    upload.seek(0)
    head = upload.read(4096)
    upload.seek(0)
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if not head:
        raise ValidationError({"file": ["The submitted file is empty."]})
    if not text and len(head) < 4096:
        raise ValidationError({"file": ["The submitted file holds only whitespace."]})
    if text and text[0] not in JSON_START:
        raise ValidationError({"file": ["The submitted file is not JSON."]})


def _store(upload: UploadedFile, file: File) -> None:
    """Save the bytes under a generated name, hashing them on the way."""
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    file.content.save("upload.json", upload, save=False)
    file.size = upload.size
    file.sha256 = digest.hexdigest()


# Bidirectional formatting characters: "invoice\u202efdp.json" would show as
# "invoicenosj.pdf".
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e")
BIDI_CONTROLS |= frozenset("\u2066\u2067\u2068\u2069")


def _display_name(name: str) -> str:
    """The client's filename as a display string: no path, no control or bidi
    characters (they could break a header or disguise the name), bounded length."""
    visible = "".join(
        c for c in name if c not in BIDI_CONTROLS and unicodedata.category(c) != "Cc"
    )
    cleaned = visible.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (cleaned if cleaned not in ("", ".", "..") else "upload.json")[:255]


def file_create(
    *,
    owner: AbstractBaseUser,
    upload: UploadedFile,
    name: str | None = None,
    declared_type: str = "",
) -> File:
    """Store an upload and queue it for processing once the row is committed."""
    _check_looks_like_json(upload)
    file = File(
        owner=owner,
        updated_by=owner,
        name=_display_name(name or upload.name or ""),
        declared_type=(declared_type or upload.content_type or "")[:100],
    )
    _store(upload, file)
    with transaction.atomic():
        _queue(file)  # saves the new row, stamped with its first event
    return file


def file_update(
    *,
    file: File,
    by: AbstractBaseUser,
    upload: UploadedFile | None = None,
    name: str | None = None,
    declared_type: str | None = None,
) -> File:
    """Change a file's details; new content replaces the old and is processed."""
    if upload is not None:
        _check_looks_like_json(upload)
    old_content = file.content.name
    if name is not None:
        file.name = _display_name(name)
    if declared_type is not None:
        file.declared_type = declared_type[:100]
    file.updated_by = by
    if upload is not None:
        _store(upload, file)
    with transaction.atomic():
        if upload is None:
            file.save()
            return file
        file.kind = None
        _queue(file)
        storage = file.content.storage
        transaction.on_commit(lambda: storage.delete(old_content))
    return file


def file_reprocess(*, file: File, by: AbstractBaseUser | None = None) -> File:
    """Process the stored file again; its previous results are replaced when it ends."""
    with transaction.atomic():
        if by is not None:
            file.updated_by = by
        _queue(file)
    return file


def file_delete(*, file: File) -> None:
    """Remove a file, its results and its stored bytes, and tell the owner."""
    storage, stored = file.content.storage, file.content.name
    with transaction.atomic():
        file_id = file.pk
        fields = _event_fields(file, "file.deleted", file_resource(file))
        file.delete()
        publish_event(
            user_id=file.owner_id,
            event_type="file.deleted",
            file_id=file_id,
            fields=fields,
        )
        transaction.on_commit(lambda: storage.delete(stored))


def _queue(file: File, *, keep_attempts: bool = False) -> None:
    """Mark the file queued under a new task id and enqueue that task after commit.

    The new task id supersedes any message still in the queue for this file.
    """
    file.status = File.Status.QUEUED
    file.progress = 0.0
    file.error = None
    if not keep_attempts:
        file.attempts = 0
    file.started_at = file.finished_at = None
    file.task_id = str(uuid.uuid4())
    _publish(file, ("file.queued", {}))
    file_id, task_id = file.pk, file.task_id
    transaction.on_commit(lambda: enqueue(file_id=file_id, task_id=task_id))


def enqueue(*, file_id: int, task_id: str) -> bool:
    """Send the processing task; when the broker is down the row stays queued.

    The periodic recovery job enqueues it again later, so a failure here is logged,
    never raised into the upload request. One quick retry covers a pooled connection
    that went stale (Redis restarted); the broker's short connect and socket timeouts
    (settings) bound the wait when Redis is unreachable to a couple of seconds.
    """
    try:
        current_app.send_task(
            PROCESS_TASK,
            args=[file_id],
            task_id=task_id,
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
    return True


# --- events --------------------------------------------------------------------------


def _publish(
    file: File,
    *events: tuple[str, dict[str, Any]],
    changed: tuple[str, ...] | None = None,
) -> None:
    """Save the file stamped with its last event's id, and record the events with it.

    `events` are (type, extra fields) pairs; every event carries the file as saved.
    `changed` names the only fields that changed, when the caller knows (the
    others, the summary among them, are then not written again).
    """
    ids = reserve_event_ids(file.owner_id, len(events))
    file.last_event_id = ids[-1]
    if changed is None:
        file.save()
    else:
        file.save(update_fields=[*changed, "last_event_id", "updated_at"])
    resource = file_resource(file)
    publish_events(
        user_id=file.owner_id,
        file_id=file.pk,
        events=[
            (seq, event_type, _event_fields(file, event_type, resource, **fields))
            for seq, (event_type, fields) in zip(ids, events, strict=True)
        ],
    )


def _event_fields(
    file: File, event_type: str, resource: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    message = STATUS_MESSAGES.get(event_type) or _outcome_message(file)
    return {
        "status": file.status,
        "progress": file.progress,
        "file": resource,
        "status_message": message,
        **fields,
    }


def _outcome_message(file: File) -> str:
    if file.status == File.Status.FAILED:
        return f"Processing failed: {file.error_text}"
    if file.status == File.Status.PROCESSED:
        return (
            f"File processed: {file.record_count} records, "
            f"{file.anomaly_count} anomalies, "
            f"{file.invalid_record_count} invalid records"
        )
    return f"Processing: {round(file.progress * 100)}%"


def _publish_outcome(file: File, first_anomalies: list[Any] | None = None) -> None:
    """The final events, in one go: the outcome, the anomalies if any, then a
    notification.

    `first_anomalies` are the file's first anomalies, when the caller has them.
    """
    if file.status == File.Status.FAILED:
        outcome = [
            (
                "file.failed",
                {"file_anomaly": {"file_id": file.pk, "data": file.error_text}},
            )
        ]
    else:
        outcome = [("file.processed", {})]
        if file.anomaly_count:
            if first_anomalies is None:
                first_anomalies = anomaly_list_head(file)
            text = engine.anomaly_text(
                first_anomalies[:ANOMALY_TEXT_LIMIT],
                limit=ANOMALY_TEXT_LIMIT,
                total=file.anomaly_count,
            )
            outcome.append(
                ("file.anomalies", {"file_anomaly": {"file_id": file.pk, "data": text}})
            )
    title = "File processed" if file.status == File.Status.PROCESSED else "File failed"
    notification = {
        "title": f"{title}: {file.name}",
        "description": _outcome_message(file),
        "user_id": file.owner_id,
    }
    _publish(file, *outcome, ("notification", notification))


def anomaly_list_head(file: File) -> list[Anomaly]:
    """The first anomalies of a file, enough for a message."""
    return list(
        Anomaly.objects.filter(file=file).order_by("record_index", "id")[
            :ANOMALY_TEXT_LIMIT
        ]
    )


# --- processing ----------------------------------------------------------------------


def file_process(*, file_id: int, task_id: str) -> File | None:
    """Process a queued file for the task that owns it, replacing earlier results.

    Safe to run again for the same task (a redelivered message): results are
    written in one transaction that first removes the previous ones. A message whose
    task id is no longer the file's (replaced, reprocessed) does nothing. Raises
    Busy when another session still holds the file's lock.
    """
    file = _claim(file_id=file_id, task_id=task_id)
    if file is None or file.status != File.Status.PROCESSING:
        return file
    try:
        with transaction.atomic():
            if not _lock_processing(file_id):
                raise Busy
            # Read again under the lock: a duplicate delivery may have finished the
            # file between the claim and here.
            file = File.objects.filter(pk=file_id).first()
            if file is None or file.task_id != task_id or file.is_final:
                return file
            outcome, first_anomalies = _run_engine(file)
            current = _current(file_id=file_id, task_id=task_id)
            current.kind = outcome.kind
            current.summary = outcome.summary
            current.record_count = outcome.record_count
            current.invalid_record_count = outcome.invalid_record_count
            current.anomaly_count = outcome.anomaly_count
            current.status = File.Status.PROCESSED
            current.progress = 1.0
            current.finished_at = timezone.now()
            _publish_outcome(current, first_anomalies)
            return current
    except engine.ProcessingError as exc:
        return file_fail(file_id=file_id, task_id=task_id, error=exc.as_dict())
    except Superseded:
        return None


def file_fail(
    *, file_id: int, task_id: str | None, error: dict[str, Any]
) -> File | None:
    """End a file `failed` with the reason, clearing any earlier results."""
    with transaction.atomic():
        try:
            file = _current(file_id=file_id, task_id=task_id)
        except Superseded:
            return None
        _clear_results(file_id)
        file.status = File.Status.FAILED
        file.error = {
            "message": "",
            "line": None,
            "column": None,
            "offset": None,
            "pointer": None,
            **error,
        }
        file.summary = {}
        file.record_count = file.invalid_record_count = file.anomaly_count = 0
        file.finished_at = timezone.now()
        _publish_outcome(file)
        return file


def _claim(*, file_id: int, task_id: str) -> File | None:
    """Mark the file processing for this task, counting the attempt.

    Raises Busy, counting nothing, while another session holds the file's lock.
    """
    with transaction.atomic():
        file = File.objects.select_for_update().filter(pk=file_id).first()
        if file is None or file.task_id != task_id or file.is_final:
            return file
        if not _lock_processing(file_id):
            raise Busy
        if file.attempts >= settings.DWELLFI_MAX_ATTEMPTS:
            message = (
                f"Gave up after {file.attempts} attempts: processing never finished "
                "(the worker was lost or timed out each time)"
            )
            file_fail(file_id=file_id, task_id=task_id, error={"message": message})
            file.refresh_from_db()
            return file
        file.status = File.Status.PROCESSING
        file.attempts += 1
        file.progress = 0.0
        file.error = None
        file.started_at = timezone.now()
        file.finished_at = None
        _publish(
            file,
            ("file.processing", {}),
            changed=(
                "status",
                "attempts",
                "progress",
                "error",
                "started_at",
                "finished_at",
            ),
        )
        return file


def _current(*, file_id: int, task_id: str | None) -> File:
    """The file row, locked, provided this task still owns it."""
    file = File.objects.select_for_update().filter(pk=file_id).first()
    if file is None or (task_id is not None and file.task_id != task_id):
        raise Superseded
    return file


def _lock_processing(file_id: int) -> bool:
    """Take a transaction-scoped lock so one file is never processed twice at once.

    SQLite runs one writing transaction at a time, so it needs no lock of its own.
    """
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [0x0DF1, file_id])
        return cursor.fetchone()[0]


def _clear_results(file_id: int) -> None:
    for model in (MetricRecord, Anomaly, RecordError):
        model.objects.filter(file_id=file_id).delete()


def _run_engine(file: File) -> tuple[engine.Outcome, list[engine.Anomaly]]:
    """Process the file's content into its results; the outcome and first anomalies."""
    # Results are stored only with the counts that describe them: none, nothing to
    # remove (three fewer statements for every new upload).
    if file.record_count or file.invalid_record_count or file.anomaly_count:
        _clear_results(file.pk)
    rules = [engine.Rule(r.metric, r.min_value, r.max_value) for r in rules_active()]
    with ResultSink(file.pk, pipelined=file.size > PIPELINE_FROM) as sink:
        outcome = engine.process(
            lambda: file.content.storage.open(file.content.name, "rb"),
            size=file.size,
            rules=rules,
            sink=sink,
            on_progress=_progress_reporter(file),
        )
    return outcome, sink.first_anomalies


def _progress_reporter(file: File) -> Callable[[float], None]:
    """Live `file.progress` events, a few a second at most."""
    interval = settings.DWELLFI_PROGRESS_INTERVAL
    last_sent = time.monotonic()

    def report(fraction: float) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if now - last_sent < interval or fraction >= 1.0:
            return
        last_sent = now
        file.progress = round(min(max(fraction, 0.0), 0.99), 4)
        fields = _event_fields(file, "file.progress", file_resource(file))
        send_live(
            file.owner_id,
            build_message("file.progress", file_id=file.pk, fields=fields),
        )

    return report


class ResultSink:
    """Writes the engine's batches: binary COPY on PostgreSQL, bulk inserts elsewhere.

    Pipelined (for files of more than one batch) on PostgreSQL, a background thread
    writes each batch while the engine parses the next one, so the client's parsing
    and the server's ingest overlap instead of taking turns (each COPY waits for
    the server to finish it). At most `IN_FLIGHT` batches wait for the thread,
    which keeps memory bounded. The thread uses this thread's database connection,
    inside its transaction; nothing else touches the connection until the sink is
    closed. Use it as a context manager: leaving it waits for the last write and
    raises its error, if any.

    While a pipelined sink is open the interpreter's thread switch interval drops
    from 5 ms to `SWITCH_INTERVAL`: the writer gives up the GIL at every network
    wait, and 5 ms a turn to win it back from the parsing thread costs more than
    the write itself.

    It keeps the first anomalies it is given, for the outcome's message.
    """

    RECORD_COLUMNS = ("file_id", "index", "server", "timestamp", *engine.METRICS)
    ANOMALY_COLUMNS = (
        "file_id",
        "record_index",
        "server",
        "timestamp",
        "metric",
        "value",
        "min_value",
        "max_value",
    )
    ISSUE_COLUMNS = ("file_id", "pointer", "message")
    # Records and their anomalies arrive together: room for both, and the next.
    IN_FLIGHT = 3
    SWITCH_INTERVAL = 0.001

    def __init__(self, file_id: int, *, pipelined: bool = False) -> None:
        self.file_id = file_id
        self.use_copy = connection.vendor == "postgresql"
        self.first_anomalies: list[engine.Anomaly] = []
        self._pending: deque[Future] = deque()
        self._executor = None
        if self.use_copy:
            connection.ensure_connection()
            self._raw = connection.connection
        if self.use_copy and pipelined:
            # Foreign keys stay deferred to the commit. Checked as each COPY ends
            # they would overlap with parsing (about 1 s sooner for 600,000
            # records), but each check locks the file row until commit: deleting
            # or claiming the file would wait for the whole run.
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="copy")

    def __enter__(self) -> "ResultSink":
        if self._executor is not None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(self.SWITCH_INTERVAL)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self._wait(0)
        except Exception:
            if exc_type is None:
                raise
            # The error already leaving matters more; this write's is its echo.
        finally:
            if self._executor is not None:
                sys.setswitchinterval(self._switch_interval)
                # After a failed write the batches still waiting are not started;
                # one already running ends before the transaction is rolled back.
                self._executor.shutdown(cancel_futures=True)

    def add_records(self, batch: list[engine.Record]) -> None:
        rows = (
            (self.file_id, r.index, r.server, r.timestamp, *r.values) for r in batch
        )
        self._write(MetricRecord, self.RECORD_COLUMNS, rows)

    def add_anomalies(self, batch: list[engine.Anomaly]) -> None:
        if len(self.first_anomalies) < ANOMALY_TEXT_LIMIT:
            self.first_anomalies += batch[
                : ANOMALY_TEXT_LIMIT - len(self.first_anomalies)
            ]
        rows = (
            (
                self.file_id,
                a.record_index,
                a.server,
                a.timestamp,
                a.metric,
                a.value,
                a.low,
                a.high,
            )
            for a in batch
        )
        self._write(Anomaly, self.ANOMALY_COLUMNS, rows)

    def add_issues(self, batch: list[engine.RecordIssue]) -> None:
        rows = ((self.file_id, _text(i.pointer), _text(i.message)) for i in batch)
        self._write(RecordError, self.ISSUE_COLUMNS, rows)

    def reset(self) -> None:
        self._wait(0)
        self.first_anomalies = []
        _clear_results(self.file_id)

    def _wait(self, most: int) -> None:
        """Wait until at most `most` writes are in flight; raise their errors."""
        while len(self._pending) > most:
            self._pending.popleft().result()

    def _write(self, model, columns, rows) -> None:
        if not self.use_copy:
            model.objects.bulk_create(
                [model(**dict(zip(columns, row, strict=True))) for row in rows],
                batch_size=500,
            )
        elif self._executor is None:
            self._copy(model, columns, rows)
        else:
            self._wait(self.IN_FLIGHT - 1)
            self._pending.append(
                self._executor.submit(self._copy, model, columns, rows)
            )

    def _copy(self, model, columns, rows) -> None:
        sql, types = _copy_statement(model, columns)
        with self._raw.cursor() as cursor, cursor.copy(sql) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)


@functools.cache
def _copy_statement(model, columns: tuple[str, ...]) -> tuple[str, list[str]]:
    """The binary COPY into `model`'s table, and the PostgreSQL types of `columns`.

    Binary COPY spares the server parsing numbers and timestamps from text. Derived
    from the model alone (no connection is opened), so any thread may ask.
    """
    fields = [model._meta.get_field(name) for name in columns]
    names = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    # "varchar(255)" -> "varchar": the length is the column's to check.
    types = [f.db_type(connection).split("(")[0] for f in fields]
    return f"COPY {model._meta.db_table} ({names}) FROM STDIN (FORMAT BINARY)", types


def _text(value: str, limit: int = 1024) -> str:
    """Text PostgreSQL can store: NUL escaped, length bounded."""
    return value.replace("\x00", "\\u0000")[:limit]


# --- recovery ------------------------------------------------------------------------


def files_recover_stuck() -> dict[str, int]:
    """Enqueue again files left queued or processing with no sign of life.

    A queued file older than the grace period likely missed the broker; a file
    processing for longer than the hard time limit has lost its worker. Each is
    queued again under a new task id (fresh attempts are not granted: the attempt
    counter still ends a file that keeps killing workers).
    """
    now = timezone.now()
    queued_before = now - timedelta(seconds=settings.DWELLFI_QUEUED_GRACE_SECONDS)
    processing_before = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    counts = {"requeued": 0, "failed": 0}
    stuck = list(
        File.objects.filter(
            Q(status=File.Status.QUEUED, updated_at__lt=queued_before)
            | Q(status=File.Status.PROCESSING, started_at__lt=processing_before)
        ).values_list("pk", flat=True)
    )
    for file_id in stuck:
        with transaction.atomic():
            file = File.objects.select_for_update().filter(pk=file_id).first()
            if file is None or file.is_final:
                continue
            if file.attempts >= settings.DWELLFI_MAX_ATTEMPTS:
                file_fail(
                    file_id=file_id,
                    task_id=None,
                    error={"message": f"Gave up after {file.attempts} attempts"},
                )
                counts["failed"] += 1
                continue
            _queue(file, keep_attempts=True)
            counts["requeued"] += 1
    return counts
