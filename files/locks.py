"""How writers take turns on one file: its processing lock and its row lock.

Locks are always taken in one order: the processing lock, the file's row, the
owner's event cursor (`notifications.publisher`). No two transactions wait for
each other in a circle.
"""

from django.db import OperationalError, connection

from .exceptions import Busy, FileGone
from .models import File

# The processing lock's first key: the second is the file's id.
PROCESSING_LOCK = 0x0DF1
# How long a run waits for the processing lock before it gives up as Busy. A
# superseded run lets go at its next batch, well within this.
LOCK_WAIT_SECONDS = 10


def processing_lock(file_id: int, *, wait: bool = True) -> bool:
    """Hold the file's processing lock until the transaction ends.

    Result rows are written and removed only under it (a transaction-scoped
    advisory lock on PostgreSQL), so two runs never interleave and a purge waits
    for a superseded run to roll back. Waits up to LOCK_WAIT_SECONDS and raises
    Busy after that; with `wait=False` answers at once whether the lock was free.
    SQLite runs one writing transaction at a time, so it needs no lock of its own.
    """
    if connection.vendor != "postgresql":
        return True
    key = [PROCESSING_LOCK, file_id]
    with connection.cursor() as cursor:
        if not wait:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", key)
            return cursor.fetchone()[0]
        try:
            # The timeout bounds every lock wait of this transaction, the row
            # locks after it too; set first (the lock reads its one row), in the
            # same round trip.
            cursor.execute(
                "WITH timeout AS (SELECT set_config('lock_timeout', %s, true)) "
                "SELECT pg_advisory_xact_lock(%s, %s) FROM timeout",
                [f"{LOCK_WAIT_SECONDS}s", *key],
            )
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == "55P03":  # lock_timeout
                raise Busy from exc
            raise
    return True


def file_row(file: File, *, lock: bool = True) -> File:
    """The file's row as it is now (not the caller's copy), locked until the
    transaction ends unless `lock` is false; FileGone when it was deleted."""
    rows = File.objects.filter(pk=file.pk, owner_id=file.owner_id)
    current = (rows.select_for_update() if lock else rows).first()
    if current is None:
        raise FileGone
    return current
