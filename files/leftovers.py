"""Removing what deleted and replaced files leave behind: results and stored bytes.

Deleting a file removes its row at once, so nothing can bring it back; its results
and stored bytes follow after commit (`PendingDeletion`), or with the periodic
jobs should that fail.
"""

import logging
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.utils import timezone

from .exceptions import Busy
from .locks import processing_lock
from .models import UPLOADS_DIR, File, PendingDeletion, Upload
from .sink import results_clear
from .uploads import upload_unstore

logger = logging.getLogger(__name__)

# A PendingDeletion older than this was not purged after its commit: the
# recovery job's.
PURGE_GRACE = timedelta(minutes=1)
# Stored bytes no file refers to are removed once older than this (a request may
# have stored them and not yet committed the row that refers to them).
UNREFERENCED_GRACE = timedelta(days=1)
SWEEP_CHUNK = 1000
# The rows that refer to stored bytes, and the field that names them.
REFERENCES = (
    (File, "content"),
    (PendingDeletion, "content"),
    (Upload, "content"),
    (Upload, "tail"),  # bytes of an S3 upload not yet in a part
)


def purge_on_commit(*, content: str, file_id: int | None = None) -> None:
    """Remove stored bytes (and a deleted file's results) once this transaction
    commits; recorded in it, so a failed purge is retried later."""
    pending = PendingDeletion.objects.create(file_id=file_id, content=content)
    transaction.on_commit(lambda: purge(pending.pk))


def purge(pending_id: int, *, wait: bool = False) -> bool:
    """Remove what one PendingDeletion names; False if it is left for later.

    Results are removed under the processing lock: while a superseded run still
    holds it, without `wait` they are left for that run (it purges as it stops)
    or the recovery job.
    """
    pending = PendingDeletion.objects.filter(pk=pending_id).first()
    if pending is None:
        return True
    try:
        if pending.content:
            upload_unstore(pending.content)
        with transaction.atomic():
            if pending.file_id is not None:
                if not processing_lock(pending.file_id, wait=wait):
                    return False
                results_clear(file_id=pending.file_id)
            PendingDeletion.objects.filter(pk=pending.pk).delete()
    except (Busy, DatabaseError, OSError):
        logger.warning("could not purge %s; the sweep will", pending, exc_info=True)
        return False
    return True


def purge_file(file_id: int) -> None:
    """Remove what a deleted file left, if it was; call once the lock is let go.

    A delete whose purge found the processing lock taken leaves it to the run or
    claim that held it, which calls this on its way out.
    """
    pending = PendingDeletion.objects.filter(file_id=file_id)
    for pending_id in pending.values_list("pk", flat=True):
        purge(pending_id, wait=True)


def purge_overdue() -> None:
    """Retry the purges that did not happen after their commit."""
    overdue = PendingDeletion.objects.filter(
        created_at__lt=timezone.now() - PURGE_GRACE
    )
    for pending_id in overdue.values_list("pk", flat=True):
        purge(pending_id)


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
        for model, field in REFERENCES:
            stored -= set(
                model.objects.filter(**{f"{field}__in": stored}).values_list(
                    field, flat=True
                )
            )
        for name in sorted(stored):
            if storage.get_modified_time(name) < before:
                storage.delete(name)
                removed += 1
    return removed
