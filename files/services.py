"""The write path's services: uploading, changing, processing and deleting a file.

How concurrent requests and workers stay out of each other's way:

* Nothing saves a whole row read earlier. A change locks the file's row
  (`SELECT … FOR UPDATE`), reads it afresh and writes only the fields it changes.
* Replacing, reprocessing or requeueing a file bumps its `generation`. A run
  writes only while the file is still at the generation it claimed: its claim and
  its outcome under the row lock, and at every batch it checks (`ResultSink`), so a
  superseded run stops at its next batch and rolls back everything it stored.
* Result rows are written and removed only under the file's processing lock, and
  locks are always taken in one order (`locks`).
* Deleting a file removes its row at once, so nothing can bring it back; its
  results and stored bytes follow after commit (`leftovers`).

The pieces they are made of live beside them: receiving and storing uploads
(`uploads`), sending tasks (`dispatch`), the locks (`locks`), what each event says
(`events`), the run's results (`sink`) and removing leftovers (`leftovers`).
"""

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from notifications.publisher import events_forget_file, events_lock

from . import dispatch, engine, inputs
from .events import (
    FileEvent,
    file_event_now,
    file_events_publish,
    outcome_events,
    progress_reporter,
)
from .exceptions import (
    Busy,
    FileGone,
    NotAtOnce,
    QuotaExceeded,
    Superseded,
    UploadRefused,
)
from .leftovers import purge_file, purge_on_commit, purge_overdue
from .locks import file_row, processing_lock
from .models import File
from .quotas import IN_FLIGHT, quota_check
from .selectors import rules_active, with_rules_fingerprint
from .sink import ResultSink, results_clear
from .uploads import display_name, upload_check, upload_store, upload_unstore

logger = logging.getLogger(__name__)

__all__ = [
    "Busy",
    "FileGone",
    "QuotaExceeded",
    "Superseded",
    "UploadRefused",
    "file_create",
    "file_delete",
    "file_fail",
    "file_process",
    "file_reprocess",
    "file_update",
    "files_recover_stuck",
]

# Files larger than about one batch of records are written by a pipelined sink.
PIPELINE_FROM = 1_000_000
# Files up to this size may be processed in one transaction on their task's first
# delivery (`_process_at_once`): well within one batch of records, and short
# enough to hold the file's row lock throughout.
AT_ONCE_MAX_BYTES = 256 * 1024


def file_create(
    *,
    owner: AbstractBaseUser,
    upload: UploadedFile,
    name: str | None = None,
    declared_type: str = "",
    stored: str | None = None,
) -> File:
    """Store an upload and queue it for processing once the row is committed.

    `stored` names bytes already in storage (a resumable upload's, which `upload`
    reads): they become the file's instead of a copy. Raises UploadRefused when it
    cannot be JSON, QuotaExceeded when the owner has no room for it (nothing is
    kept either way).
    """
    upload_check(upload)
    adding = {"files": 1, "size": upload.size, "processing": 1}
    quota_check(owner_id=owner.pk, **adding)  # before storing anything
    file = File(
        owner=owner,
        updated_by=owner,
        name=display_name(name or upload.name or ""),
        declared_type=(declared_type or upload.content_type or "")[:100],
        task_id=dispatch.new_task_id(),
        **upload_store(upload, stored),
    )
    try:
        with transaction.atomic():
            # The owner's turn, and the id of the event that reports the upload:
            # the row is inserted with it, in one statement, not updated after.
            file.last_event_id = events_lock(owner.pk, reserve=1)
            quota_check(owner_id=owner.pk, **adding)  # again, the owner's turn held
            file.save(force_insert=True)
            file_events_publish(
                file, [("file.queued", {})], reserved=file.last_event_id
            )
            dispatch.enqueue_on_commit(file)
    except BaseException:
        upload_unstore(file.content.name)
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
    stored: str | None = None,
) -> File:
    """Change a file's details; new content replaces the old and is processed.

    `stored` names the new content's bytes already in storage, as for
    `file_create`. Raises FileGone when the file was deleted meanwhile,
    UploadRefused when the new content cannot be JSON, QuotaExceeded when it does
    not fit the owner's limits (the new bytes are not kept).
    """
    details: dict[str, Any] = {"updated_by": by}
    if name is not None:
        details["name"] = display_name(name)
    if declared_type is not None:
        details["declared_type"] = declared_type[:100]
    if upload is None:
        with transaction.atomic():
            current = file_row(file)
            _save(current, details)
        return current
    upload_check(upload)
    # Before storing anything, on the row as it is now (not the caller's copy).
    quota_for_new_run(file_row(file, lock=False), size=upload.size)
    content = upload_store(upload, stored)
    try:
        with transaction.atomic():
            current = file_row(file)
            events_lock(current.owner_id)
            quota_for_new_run(current, size=content["size"])
            purge_on_commit(content=current.content.name)
            _requeue(current, kind=None, **content, **details)
    except BaseException:
        upload_unstore(content["content"])
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
        current = file_row(file)
        if current.status != File.Status.QUEUED:
            events_lock(current.owner_id)
            quota_for_new_run(current)
            _requeue(current, **({"updated_by": by} if by is not None else {}))
    return current


def quota_for_new_run(file: File, *, size: int | None = None) -> None:
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
        current = file_row(file)
        File.objects.filter(pk=current.pk).delete()
        events_forget_file(file_id=current.pk)
        file_events_publish(current, [("file.deleted", {})])
        purge_on_commit(file_id=current.pk, content=current.content.name)


def _save(
    file: File,
    changes: dict[str, Any],
    *events: tuple[str, dict],
    earlier: Sequence[FileEvent] = (),
) -> None:
    """Write `changes` to the locked file's row, with the events that report them.

    Only the fields named are written, never the whole row; the row is stamped with
    its last event's id and the events carry the file as written. `events` are
    (type, extra fields) pairs; `earlier` events, made before these changes
    (`file_event_now`), go first.
    """
    changes = {**changes, "updated_at": timezone.now()}
    for name, value in changes.items():
        setattr(file, name, value)
    if events:
        changes["last_event_id"] = file_events_publish(file, events, earlier=earlier)
        file.last_event_id = changes["last_event_id"]
    File.objects.filter(pk=file.pk).update(**changes)


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
            "task_id": dispatch.new_task_id(),
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
    dispatch.enqueue_on_commit(file)


# --- processing ----------------------------------------------------------------------


def file_process(
    *, file_id: int, task_id: str, first_delivery: bool = False
) -> File | None:
    """Process a queued file for the task that owns it, replacing earlier results.

    Safe to run again for the same task (a redelivered message): results are
    written in one transaction that first removes the previous ones. A message whose
    task id is no longer the file's (replaced, reprocessed) does nothing, and a run
    superseded while it works stops at its next batch, keeping nothing. Raises Busy
    when another session holds the file's processing lock for too long.

    `first_delivery`: the task's message is delivered for the first time (not
    redelivered, not a retry). A small file is then claimed, processed and
    finished in one transaction (`_process_at_once`); otherwise the claim commits
    the attempt first, and the results follow in a second transaction.
    """
    if first_delivery:
        try:
            return _process_at_once(file_id=file_id, task_id=task_id)
        except NotAtOnce:
            pass  # rolled back: nothing of that run is kept, nothing was counted
    file = _claim(file_id=file_id, task_id=task_id)
    if file is None or file.status != File.Status.PROCESSING:
        purge_file(file_id)  # if deleted meanwhile: now the lock is free
        return file
    generation = file.generation
    try:
        with transaction.atomic():
            processing_lock(file_id)
            # Read again under the lock: a duplicate delivery may have finished the
            # file between the claim and here, or a request superseded it.
            file = with_rules_fingerprint(File.objects.filter(pk=file_id)).first()
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
            changes = _processed_changes(outcome)
            for name, value in changes.items():
                setattr(current, name, value)
            _save(current, changes, *outcome_events(current, first_anomalies))
            return current
    except engine.ProcessingError as exc:
        return file_fail(file_id=file_id, task_id=task_id, error=exc.as_dict())
    except Superseded:
        logger.info("file %s: generation %s superseded", file_id, generation)
        purge_file(file_id)
        return None


def _process_at_once(*, file_id: int, task_id: str) -> File:
    """Claim, process and finish a small file in one transaction.

    For a task's first delivery only. Nothing is committed before the outcome: a
    worker killed mid-run leaves the file `queued` with its attempt uncounted, but
    its message then comes back marked redelivered and takes the two-transaction
    way, which counts it, so a file that keeps killing workers still ends `failed`
    after DWELLFI_MAX_ATTEMPTS. A run whose message is acknowledged without an
    outcome (the hard time limit) leaves no enqueued marker behind, so the recovery
    job sends the task again, and a message it sends again always takes the other
    way too: only files queued for less than half its grace period are processed
    here (half: the web's, the worker's and beat's clocks may differ a little).
    The marker goes for any first delivery: one that takes the other way commits
    its claim, and the recovery job looks at a `processing` file's lock instead.

    Raises NotAtOnce, everything rolled back, when the file is not one for this
    way: gone, not this task's or not queued (the other way answers those as it
    always does), attempts already counted, a large file or one whose records fill
    more than one batch (a compressed one), or a failure to report (the other way
    reports it, processing the small file again).
    """
    # Before the transaction, so that no lock waits on Redis (down, say).
    dispatch.forget_enqueued(task_id)
    try:
        with transaction.atomic():
            processing_lock(file_id)
            file = with_rules_fingerprint(
                File.objects.select_for_update().filter(pk=file_id)
            ).first()
            fresh = timezone.now() - timedelta(
                seconds=settings.DWELLFI_QUEUED_GRACE_SECONDS / 2
            )
            if (
                file is None
                or file.task_id != task_id
                or file.attempts
                or file.size > AT_ONCE_MAX_BYTES
                or file.status != File.Status.QUEUED
                or file.updated_at < fresh
            ):
                raise NotAtOnce
            claimed = _claim_changes(file)
            for name, value in claimed.items():
                setattr(file, name, value)
            started = file_event_now(file, "file.processing")
            outcome, first_anomalies = _run_engine(file, one_batch=True)
            changes = _processed_changes(outcome)
            for name, value in changes.items():
                setattr(file, name, value)
            _save(
                file,
                {**claimed, **changes},
                *outcome_events(file, first_anomalies),
                earlier=[started],
            )
            return file
    except engine.ProcessingError:
        raise NotAtOnce from None


def _processed_changes(outcome: engine.Outcome) -> dict[str, Any]:
    """What a successful run writes to the file's row."""
    return {
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


def file_fail(
    *, file_id: int, task_id: str | None, error: dict[str, Any]
) -> File | None:
    """End a file `failed` with the reason, clearing any earlier results.

    Only while `task_id` (when given) is still the file's; an outcome already
    reached is kept.
    """
    with transaction.atomic():
        processing_lock(file_id)
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
    _save(file, changes, *outcome_events(file))


def _claim(*, file_id: int, task_id: str) -> File | None:
    """Mark the file processing for this task, counting the attempt.

    Waits while another session holds the file's processing lock (a superseded
    run lets go at its next batch); raises Busy, counting nothing, if that takes
    too long.
    """
    with transaction.atomic():
        processing_lock(file_id)
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
        _save(file, _claim_changes(file), ("file.processing", {}))
        return file


def _claim_changes(file: File) -> dict[str, Any]:
    """What claiming the file for a run writes: processing, one attempt more."""
    return {
        "status": File.Status.PROCESSING,
        "attempts": file.attempts + 1,
        "progress": 0.0,
        "error": None,
        "started_at": timezone.now(),
        "finished_at": None,
    }


def _run_engine(
    file: File, *, one_batch: bool = False
) -> tuple[engine.Outcome, list[engine.Anomaly]]:
    """Process the file's content into its results; the outcome and first anomalies."""
    # Results of an earlier generation go first. The first generation has none: no
    # run but its own has stored any, and a failed or superseded one kept nothing.
    if file.generation > 1:
        results_clear(file_id=file.pk)
    rules = [
        engine.Rule(r.metric, r.min_value, r.max_value)
        for r in rules_active(fingerprint=getattr(file, "rules_fingerprint", None))
    ]
    pipelined = file.size > PIPELINE_FROM
    with ResultSink(
        file.pk, file.generation, pipelined=pipelined, one_batch=one_batch
    ) as sink:
        outcome = inputs.process(
            lambda: file.content.storage.open(file.content.name, "rb"),
            name=file.name,
            size=file.size,
            max_decompressed=settings.DWELLFI_MAX_DECOMPRESSED_BYTES,
            rules=rules,
            sink=sink,
            on_progress=progress_reporter(file, stopped=lambda: sink.superseded),
        )
    return outcome, sink.first_anomalies


# --- recovery ------------------------------------------------------------------------


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
    accepted = dispatch.accepted(task_id for _, task_id, _ in waiting)
    for file_id, task_id, size in waiting:
        if task_id not in accepted and dispatch.enqueue(
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
    purge_overdue()
    return counts


def _recover_run(file_id: int, started_before) -> str | None:
    """Requeue (or fail) one file whose run looks lost; what was done, if anything."""
    with transaction.atomic():
        if not processing_lock(file_id, wait=False):
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
