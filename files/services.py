"""Writes: storing uploads, processing them, and reporting every change as an event.

How concurrent requests and workers stay out of each other's way:

* Nothing saves a whole row read earlier. A change locks the file's row
  (`SELECT … FOR UPDATE`), reads it afresh and writes only the fields it changes.
* Replacing, reprocessing or requeueing a file bumps its `generation`. A run
  writes only while the file is still at the generation it claimed: its claim and
  its outcome under the row lock, and at every batch it checks (`ResultSink`), so a
  superseded run stops at its next batch and rolls back everything it stored.
* Result rows are written and removed only under the file's processing lock (a
  transaction-scoped advisory lock on PostgreSQL), so two runs never interleave
  and a purge waits for a superseded run to roll back.
* Locks are always taken in one order: the processing lock, the file's row, the
  owner's event cursor. No two transactions wait for each other in a circle.
* Deleting a file removes its row at once, so nothing can bring it back; its
  results and stored bytes follow after commit (`PendingDeletion`), or with the
  periodic sweep should that fail.
"""

import hashlib
import logging
import time
import unicodedata
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError, OperationalError, connection, transaction
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from notifications.publisher import (
    build_message,
    events_forget_file,
    events_lock,
    publish_event,
    publish_events,
    reserve_event_ids,
    send_live,
)

from . import engine
from .exceptions import Busy, FileGone, QuotaExceeded, Superseded
from .models import UPLOADS_DIR, Anomaly, File, PendingDeletion
from .quotas import IN_FLIGHT, quota_check
from .selectors import rules_active
from .serializers import file_resource
from .sink import ANOMALY_TEXT_LIMIT, ResultSink, results_clear

logger = logging.getLogger(__name__)

__all__ = [
    "Busy",
    "FileGone",
    "QuotaExceeded",
    "Superseded",
    "enqueue",
    "file_create",
    "file_delete",
    "file_fail",
    "file_process",
    "file_reprocess",
    "file_update",
    "files_recover_stuck",
    "files_sweep_leftovers",
]

PROCESS_TASK = "files.tasks.process_file"
# What a JSON text can start with, after optional whitespace and a UTF-8 BOM.
JSON_START = frozenset(b'{["-0123456789tfn')
# Files larger than about one batch of records are written by a pipelined sink.
PIPELINE_FROM = 1_000_000
STATUS_MESSAGES = {
    "file.queued": "File queued for processing",
    "file.processing": "Processing started",
    "file.deleted": "File deleted",
}
# The processing lock's first key: the second is the file's id.
PROCESSING_LOCK = 0x0DF1
# How long a run waits for the processing lock before it gives up as Busy. A
# superseded run lets go at its next batch, well within this.
LOCK_WAIT_SECONDS = 10
# Marks a task the broker accepted; lost with the broker's queue if Redis restarts
# without persistence, which is how the recovery job tells waiting from lost.
ENQUEUED_MARKER_SECONDS = 7 * 24 * 3600
# A PendingDeletion older than this was not purged after its commit: the sweep's.
PURGE_GRACE = timedelta(minutes=1)
# Stored bytes no file refers to are removed once older than this (a request may
# have stored them and not yet committed the row that refers to them).
UNREFERENCED_GRACE = timedelta(days=1)
SWEEP_CHUNK = 1000


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


def _store(upload: UploadedFile) -> dict[str, Any]:
    """Save the bytes under a generated name, hashing them on the way; the fields
    that describe them."""
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    holder = File()
    holder.content.save("upload.json", upload, save=False)
    return {
        "content": holder.content.name,
        "size": upload.size,
        "sha256": digest.hexdigest(),
    }


def _unstore(name: str) -> None:
    """Remove stored bytes that no committed row refers to."""
    File._meta.get_field("content").storage.delete(name)


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
    """Store an upload and queue it for processing once the row is committed.

    Raises QuotaExceeded when the owner has no room for it (nothing is kept).
    """
    _check_looks_like_json(upload)
    adding = {"files": 1, "size": upload.size, "processing": 1}
    quota_check(owner_id=owner.pk, **adding)  # before storing anything
    file = File(
        owner=owner,
        updated_by=owner,
        name=_display_name(name or upload.name or ""),
        declared_type=(declared_type or upload.content_type or "")[:100],
        task_id=_new_task_id(),
        **_store(upload),
    )
    try:
        with transaction.atomic():
            (event_id,) = reserve_event_ids(owner.pk, 1)
            quota_check(owner_id=owner.pk, **adding)  # again, the owner's turn held
            file.last_event_id = event_id
            file.save(force_insert=True)
            _record_events(file, [event_id], ("file.queued", {}))
            _enqueue_on_commit(file)
    except BaseException:
        _unstore(file.content.name)
        raise
    _log_upload("file uploaded", file)
    return file


def _log_upload(message: str, file: File) -> None:
    """The line that starts an upload's trail through the logs (with the request id)."""
    logger.info(
        message, extra={"file_id": file.pk, "size": file.size, "task_id": file.task_id}
    )


def file_update(
    *,
    file: File,
    by: AbstractBaseUser,
    upload: UploadedFile | None = None,
    name: str | None = None,
    declared_type: str | None = None,
) -> File:
    """Change a file's details; new content replaces the old and is processed.

    Raises FileGone when the file was deleted meanwhile, QuotaExceeded when the
    new content does not fit the owner's limits (the new bytes are not kept).
    """
    details: dict[str, Any] = {"updated_by": by}
    if name is not None:
        details["name"] = _display_name(name)
    if declared_type is not None:
        details["declared_type"] = declared_type[:100]
    if upload is None:
        with transaction.atomic():
            current = _reread(file)
            _save(current, details)
        return current
    _check_looks_like_json(upload)
    # Before storing anything, on the row as it is now (not the caller's copy).
    _quota_for_new_run(_reread(file, lock=False), size=upload.size)
    stored = _store(upload)
    try:
        with transaction.atomic():
            current = _reread(file)
            events_lock(current.owner_id)
            _quota_for_new_run(current, size=stored["size"])
            pending = PendingDeletion.objects.create(content=current.content.name)
            _requeue(current, kind=None, **stored, **details)
            transaction.on_commit(lambda: _purge(pending.pk))
    except BaseException:
        _unstore(stored["content"])
        raise
    _log_upload("file replaced", current)
    return current


def file_reprocess(*, file: File, by: AbstractBaseUser | None = None) -> File:
    """Process the stored file again; a file still waiting in the queue already will.

    Its results are replaced when the new run ends. Raises FileGone when the file
    was deleted meanwhile, QuotaExceeded when the owner has as many files queued
    or processing as allowed.
    """
    with transaction.atomic():
        current = _reread(file)
        if current.status != File.Status.QUEUED:
            events_lock(current.owner_id)
            _quota_for_new_run(current)
            _requeue(current, **({"updated_by": by} if by is not None else {}))
    return current


def _quota_for_new_run(file: File, *, size: int | None = None) -> None:
    """Check the owner's limits for queueing the file again, with new content of
    `size` bytes when given (its old bytes then go)."""
    quota_check(
        owner_id=file.owner_id,
        size=size or 0,
        processing=0 if file.status in IN_FLIGHT else 1,
        replacing=file if size is not None else None,
    )


def file_delete(*, file: File) -> None:
    """Remove a file, its results and its stored bytes, and tell the owner.

    The row goes in this transaction, so nothing can bring the file back; a run
    still processing it stops at its next batch. Raises FileGone when it was
    already gone.
    """
    with transaction.atomic():
        current = _reread(file)
        fields = _event_fields(current, "file.deleted", file_resource(current))
        pending = PendingDeletion.objects.create(
            file_id=current.pk, content=current.content.name
        )
        File.objects.filter(pk=current.pk).delete()
        events_forget_file(file_id=current.pk)
        publish_event(
            user_id=current.owner_id,
            event_type="file.deleted",
            file_id=current.pk,
            fields=fields,
        )
        transaction.on_commit(lambda: _purge(pending.pk))


def _reread(file: File, *, lock: bool = True) -> File:
    """The file's row as it is now (not the caller's copy), locked until the
    transaction ends unless `lock` is false; FileGone when it was deleted."""
    rows = File.objects.filter(pk=file.pk, owner_id=file.owner_id)
    current = (rows.select_for_update() if lock else rows).first()
    if current is None:
        raise FileGone
    return current


def _new_task_id() -> str:
    return str(uuid.uuid4())


def _requeue(file: File, **changes: Any) -> None:
    """Queue the locked file again as its next generation.

    A run of the previous generation stops at its next batch. The last outcome's
    results (and the counts and summary that describe them) stay until the new
    one replaces them. Attempts start from zero unless `changes` keeps them.
    """
    _save(
        file,
        {
            "generation": file.generation + 1,
            "task_id": _new_task_id(),
            "status": File.Status.QUEUED,
            "progress": 0.0,
            "error": None,
            "attempts": 0,
            "started_at": None,
            "finished_at": None,
            **changes,
        },
        ("file.queued", {}),
    )
    _enqueue_on_commit(file)


def _enqueue_on_commit(file: File) -> None:
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
    cache.set(_enqueued_marker(task_id), 1, ENQUEUED_MARKER_SECONDS)
    return True


def processing_queue(size: int) -> str:
    """The queue that processes a file of `size` bytes."""
    large = settings.DWELLFI_LARGE_FILE_BYTES
    if large and size >= large:
        return settings.DWELLFI_LARGE_FILE_QUEUE
    return settings.CELERY_TASK_DEFAULT_QUEUE


def _enqueued_marker(task_id: str) -> str:
    return f"enqueued:{task_id}"


# --- writing a file's row and its events ---------------------------------------------


def _save(file: File, changes: dict[str, Any], *events: tuple[str, dict]) -> None:
    """Write `changes` to the locked file's row, with the events that report them.

    Only the fields named are written, never the whole row; the row is stamped with
    its last event's id and the events carry the file as written. `events` are
    (type, extra fields) pairs.
    """
    changes = {**changes, "updated_at": timezone.now()}
    event_ids: range | list[int] = []
    if events:
        event_ids = reserve_event_ids(file.owner_id, len(events))
        changes["last_event_id"] = event_ids[-1]
    for name, value in changes.items():
        setattr(file, name, value)
    File.objects.filter(pk=file.pk).update(**changes)
    if events:
        _record_events(file, event_ids, *events)


def _record_events(
    file: File, event_ids: range | list[int], *events: tuple[str, dict]
) -> None:
    resource = file_resource(file)
    publish_events(
        user_id=file.owner_id,
        file_id=file.pk,
        events=[
            (seq, event_type, _event_fields(file, event_type, resource, **fields))
            for seq, (event_type, fields) in zip(event_ids, events, strict=True)
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


def _outcome_events(
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
                first_anomalies = anomaly_list_head(file)
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
        "description": _outcome_message(file),
        "user_id": file.owner_id,
    }
    return [*events, ("notification", notification)]


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
    task id is no longer the file's (replaced, reprocessed) does nothing, and a run
    superseded while it works stops at its next batch, keeping nothing. Raises Busy
    when another session holds the file's processing lock for too long.
    """
    file = _claim(file_id=file_id, task_id=task_id)
    if file is None or file.status != File.Status.PROCESSING:
        _purge_file(file_id)  # if deleted meanwhile: now the lock is free
        return file
    generation = file.generation
    try:
        with transaction.atomic():
            _take_processing_lock(file_id)
            # Read again under the lock: a duplicate delivery may have finished the
            # file between the claim and here, or a request superseded it.
            file = File.objects.filter(pk=file_id).first()
            if file is None or file.generation != generation:
                raise Superseded
            if file.is_final:
                return file
            outcome, first_anomalies = _run_engine(file)
            current = (
                File.objects.select_for_update()
                .filter(pk=file_id, generation=generation)
                .first()
            )
            if current is None:
                raise Superseded
            changes = {
                "kind": outcome.kind,
                "summary": outcome.summary,
                "record_count": outcome.record_count,
                "invalid_record_count": outcome.invalid_record_count,
                "anomaly_count": outcome.anomaly_count,
                "status": File.Status.PROCESSED,
                "progress": 1.0,
                "error": None,
                "finished_at": timezone.now(),
            }
            for name, value in changes.items():
                setattr(current, name, value)
            _save(current, changes, *_outcome_events(current, first_anomalies))
            return current
    except engine.ProcessingError as exc:
        return file_fail(file_id=file_id, task_id=task_id, error=exc.as_dict())
    except Superseded:
        logger.info("file %s: generation %s superseded", file_id, generation)
        _purge_file(file_id)
        return None


def file_fail(
    *, file_id: int, task_id: str | None, error: dict[str, Any]
) -> File | None:
    """End a file `failed` with the reason, clearing any earlier results.

    Only while `task_id` (when given) is still the file's; an outcome already
    reached is kept.
    """
    with transaction.atomic():
        _take_processing_lock(file_id)
        file = File.objects.select_for_update().filter(pk=file_id).first()
        if file is None or (task_id is not None and file.task_id != task_id):
            return None
        if not file.is_final:
            _fail(file, error)
        return file


def _fail(file: File, error: dict[str, Any]) -> None:
    """Fail the locked file (processing lock held): results cleared, outcome told."""
    if file.generation > 1:
        results_clear(file_id=file.pk)
    changes = {
        "summary": {},
        "record_count": 0,
        "invalid_record_count": 0,
        "anomaly_count": 0,
        "status": File.Status.FAILED,
        "error": {
            "message": "",
            "line": None,
            "column": None,
            "offset": None,
            "pointer": None,
            **error,
        },
        "finished_at": timezone.now(),
    }
    for name, value in changes.items():
        setattr(file, name, value)
    _save(file, changes, *_outcome_events(file))


def _claim(*, file_id: int, task_id: str) -> File | None:
    """Mark the file processing for this task, counting the attempt.

    Waits while another session holds the file's processing lock (a superseded
    run lets go at its next batch); raises Busy, counting nothing, if that takes
    too long.
    """
    with transaction.atomic():
        _take_processing_lock(file_id)
        file = File.objects.select_for_update().filter(pk=file_id).first()
        if file is None or file.task_id != task_id or file.is_final:
            return file
        if file.attempts >= settings.DWELLFI_MAX_ATTEMPTS:
            message = (
                f"Gave up after {file.attempts} attempts: processing never finished "
                "(the worker was lost or timed out each time)"
            )
            _fail(file, {"message": message})
            return file
        _save(
            file,
            {
                "status": File.Status.PROCESSING,
                "attempts": file.attempts + 1,
                "progress": 0.0,
                "error": None,
                "started_at": timezone.now(),
                "finished_at": None,
            },
            ("file.processing", {}),
        )
        return file


def _take_processing_lock(file_id: int, *, wait: bool = True) -> bool:
    """Hold the file's processing lock until the transaction ends.

    Waits up to LOCK_WAIT_SECONDS and raises Busy after that; with `wait=False`
    answers at once whether the lock was free. SQLite runs one writing transaction
    at a time, so it needs no lock of its own.
    """
    if connection.vendor != "postgresql":
        return True
    key = [PROCESSING_LOCK, file_id]
    with connection.cursor() as cursor:
        if not wait:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", key)
            return cursor.fetchone()[0]
        # Bounds every lock wait of this transaction, the row locks after it too.
        cursor.execute(
            "SELECT set_config('lock_timeout', %s, true)",
            [f"{LOCK_WAIT_SECONDS}s"],
        )
        try:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", key)
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == "55P03":  # lock_timeout
                raise Busy from exc
            raise
    return True


def _run_engine(file: File) -> tuple[engine.Outcome, list[engine.Anomaly]]:
    """Process the file's content into its results; the outcome and first anomalies."""
    # Results of an earlier generation go first. The first generation has none: no
    # run but its own has stored any, and a failed or superseded one kept nothing.
    if file.generation > 1:
        results_clear(file_id=file.pk)
    rules = [engine.Rule(r.metric, r.min_value, r.max_value) for r in rules_active()]
    pipelined = file.size > PIPELINE_FROM
    with ResultSink(file.pk, file.generation, pipelined=pipelined) as sink:
        outcome = engine.process(
            lambda: file.content.storage.open(file.content.name, "rb"),
            size=file.size,
            rules=rules,
            sink=sink,
            on_progress=_progress_reporter(file, sink),
        )
    return outcome, sink.first_anomalies


def _progress_reporter(file: File, sink: ResultSink) -> Callable[[float], None]:
    """Live `file.progress` events, a few a second at most, until superseded.

    Each is tiny: status, progress, the status message, attempts and the file's
    last durable event id (so a client can tell a stale one), no file resource.
    """
    interval = settings.DWELLFI_PROGRESS_INTERVAL
    last_sent = time.monotonic()

    def report(fraction: float) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if now - last_sent < interval or fraction >= 1.0 or sink.superseded:
            return
        last_sent = now
        file.progress = round(min(max(fraction, 0.0), 0.99), 4)
        # Tiny, a few a second: what a progress bar needs, never the resource.
        fields = {
            "status": file.status,
            "progress": file.progress,
            "status_message": _outcome_message(file),
            "attempts": file.attempts,
            "last_event_id": file.last_event_id,
        }
        send_live(
            file.owner_id,
            build_message("file.progress", file_id=file.pk, fields=fields),
        )

    return report


# --- recovery and leftovers ----------------------------------------------------------


def files_recover_stuck() -> dict[str, int]:
    """Send again the tasks of files whose message is lost; requeue lost runs.

    A file queued longer than the grace period whose task the broker no longer
    holds (Redis restarted, or it was down at upload) gets the same task sent again:
    no new generation, no event. One still waiting in a long queue is left alone.
    A file processing for longer than the hard time limit whose processing lock is
    free has lost its worker: it is queued again as a new generation, or failed
    once its attempts are used up. Also retries purges that failed after commit.
    """
    now = timezone.now()
    counts = {"requeued": 0, "failed": 0}
    queued_before = now - timedelta(seconds=settings.DWELLFI_QUEUED_GRACE_SECONDS)
    waiting = list(
        File.objects.filter(
            status=File.Status.QUEUED, updated_at__lt=queued_before
        ).values_list("pk", "task_id", "size")
    )
    markers = cache.get_many([_enqueued_marker(task_id) for _, task_id, _ in waiting])
    for file_id, task_id, size in waiting:
        if _enqueued_marker(task_id) not in markers and enqueue(
            file_id=file_id, task_id=task_id, size=size
        ):
            counts["requeued"] += 1
    processing_before = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    lost = File.objects.filter(
        status=File.Status.PROCESSING, started_at__lt=processing_before
    ).values_list("pk", flat=True)
    for file_id in list(lost):
        outcome = _recover_run(file_id, processing_before)
        if outcome:
            counts[outcome] += 1
    for pending_id in PendingDeletion.objects.filter(
        created_at__lt=now - PURGE_GRACE
    ).values_list("pk", flat=True):
        _purge(pending_id)
    return counts


def _recover_run(file_id: int, started_before) -> str | None:
    """Requeue (or fail) one file whose run looks lost; what was done, if anything."""
    with transaction.atomic():
        if not _take_processing_lock(file_id, wait=False):
            return None  # its run is alive after all
        file = (
            File.objects.select_for_update()
            .filter(
                pk=file_id,
                status=File.Status.PROCESSING,
                started_at__lt=started_before,
            )
            .first()
        )
        if file is None:
            return None
        if file.attempts >= settings.DWELLFI_MAX_ATTEMPTS:
            _fail(file, {"message": f"Gave up after {file.attempts} attempts"})
            return "failed"
        # Fresh attempts are not granted: the counter still ends a file that keeps
        # killing workers.
        _requeue(file, attempts=file.attempts, kind=file.kind)
        return "requeued"


def _purge(pending_id: int, *, wait: bool = False) -> bool:
    """Remove what one PendingDeletion names; False if it is left for later.

    Results are removed under the processing lock: while a superseded run still
    holds it, without `wait` they are left for that run (it purges as it stops)
    or the sweep.
    """
    pending = PendingDeletion.objects.filter(pk=pending_id).first()
    if pending is None:
        return True
    try:
        if pending.content:
            _unstore(pending.content)
        with transaction.atomic():
            if pending.file_id is not None:
                if not _take_processing_lock(pending.file_id, wait=wait):
                    return False
                results_clear(file_id=pending.file_id)
            PendingDeletion.objects.filter(pk=pending.pk).delete()
    except (Busy, DatabaseError, OSError):
        logger.warning("could not purge %s; the sweep will", pending, exc_info=True)
        return False
    return True


def _purge_file(file_id: int) -> None:
    """Remove what a deleted file left, if it was; call once the lock is let go.

    A delete whose purge found the processing lock taken leaves it to the run or
    claim that held it, which calls this on its way out.
    """
    pending = PendingDeletion.objects.filter(file_id=file_id)
    for pending_id in pending.values_list("pk", flat=True):
        _purge(pending_id, wait=True)


def files_sweep_leftovers() -> int:
    """Remove stored bytes that no file refers to any more; how many were removed.

    A backstop for bytes whose request died between storing them and committing
    (or removing) the row that refers to them.
    """
    storage = File._meta.get_field("content").storage
    try:
        _, names = storage.listdir(UPLOADS_DIR)
    except FileNotFoundError:
        return 0
    before = timezone.now() - UNREFERENCED_GRACE
    removed = 0
    for start in range(0, len(names), SWEEP_CHUNK):
        stored = {
            f"{UPLOADS_DIR}/{name}" for name in names[start : start + SWEEP_CHUNK]
        }
        for model in (File, PendingDeletion):
            stored -= set(
                model.objects.filter(content__in=stored).values_list(
                    "content", flat=True
                )
            )
        for name in sorted(stored):
            if storage.get_modified_time(name) < before:
                storage.delete(name)
                removed += 1
    return removed
