"""The engine's `Sink` for the database: a run's results, stored batch by batch.

Binary COPY on PostgreSQL, bulk inserts elsewhere; every write happens inside the
run's transaction, so a run that fails or is superseded leaves nothing behind.
"""

import functools
import sys
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.db import connection
from django.db.models import Model

from . import engine
from .exceptions import NotAtOnce, Superseded
from .models import Anomaly, File, MetricRecord, RecordError
from .signals import batch_boundary

# Anomalies kept for the outcome's message ("cpu_usage out of range: ...").
ANOMALY_TEXT_LIMIT = 20
RESULT_MODELS = (MetricRecord, Anomaly, RecordError)


def results_clear(*, file_id: int) -> None:
    """Remove every stored result of a file (records, anomalies, skipped records)."""
    for model in RESULT_MODELS:
        model.objects.filter(file_id=file_id).delete()


class ResultSink:
    """Writes the engine's batches for one generation of a file.

    Before each batch of records after the first it checks that the file is still
    at that generation: a run whose file was replaced, reprocessed or deleted
    raises Superseded there, at its next batch, instead of at its end.

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

    With `one_batch` it refuses a second batch of records (NotAtOnce): a run in
    one transaction holds the file's row lock throughout, which only a small
    file's run may.

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

    def __init__(
        self, file_id: int, generation: int, *, pipelined: bool, one_batch: bool = False
    ) -> None:
        self.file_id = file_id
        self.generation = generation
        self.one_batch = one_batch
        self.use_copy = connection.vendor == "postgresql"
        self.first_anomalies: list[engine.Anomaly] = []
        self.superseded = False
        self._batches = 0
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
        self._batches += 1
        if self._batches > 1:
            if self.one_batch:
                raise NotAtOnce
            batch_boundary.send(
                sender=type(self),
                file_id=self.file_id,
                generation=self.generation,
                batch=self._batches - 1,
            )
            self._run(self._check_current)
        rows = (
            (self.file_id, r.index, r.server, r.timestamp, *r.values) for r in batch
        )
        self._run(self._store, MetricRecord, self.RECORD_COLUMNS, rows)

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
        self._run(self._store, Anomaly, self.ANOMALY_COLUMNS, rows)

    def add_issues(self, batch: list[engine.RecordIssue]) -> None:
        rows = ((self.file_id, _text(i.pointer), _text(i.message)) for i in batch)
        self._run(self._store, RecordError, self.ISSUE_COLUMNS, rows)

    def reset(self) -> None:
        self._wait(0)
        self.first_anomalies = []
        results_clear(file_id=self.file_id)

    def _wait(self, most: int) -> None:
        """Wait until at most `most` writes are in flight; raise their errors."""
        while len(self._pending) > most:
            self._pending.popleft().result()

    def _run(self, work: Callable[..., None], *args: Any) -> None:
        """Do `work` now, or queue it for the writer thread when pipelined."""
        if self._executor is None:
            work(*args)
        else:
            self._wait(self.IN_FLIGHT - 1)
            self._pending.append(self._executor.submit(work, *args))

    def _check_current(self) -> None:
        """Raise Superseded unless the file is still at this run's generation."""
        if self.use_copy:
            row = self._raw.execute(
                f"SELECT generation FROM {File._meta.db_table} WHERE id = %s",
                [self.file_id],
            ).fetchone()
            current = row[0] if row else None
        else:
            current = (
                File.objects.filter(pk=self.file_id)
                .values_list("generation", flat=True)
                .first()
            )
        if current != self.generation:
            self.superseded = True
            raise Superseded

    def _store(
        self, model: type[Model], columns: tuple[str, ...], rows: Iterable[tuple]
    ) -> None:
        if not self.use_copy:
            model.objects.bulk_create(
                [model(**dict(zip(columns, row, strict=True))) for row in rows],
                batch_size=500,
            )
            return
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
