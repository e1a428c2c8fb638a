"""The processing engine: stream an uploaded JSON file into records and anomalies.

`process()` reads the document through `jsonread`: a metrics document by the
strict tokenizer with runs of records decoded by msgspec (`_Walk._window` checks
a run at once), anything else by yajl behind a cheap prefilter for what yajl
gets wrong, walking its events with a pull-style walker that validates
server-metrics records, checks them against the anomaly rules and hands them to
a sink in batches. Should a first pass fail for any reason, the strict
tokenizer of `jsonstrict` reads the file again and the walk restarts from
scratch after `sink.reset()`: a syntax error becomes `DocumentMalformed` with
its position, while a valid document that yajl refused (an integer beyond 64
bits, say) is processed by this strict pass, so results never depend on
yajl's or msgspec's quirks. The strict pass validates and walks at once (one
read, not two); if it meets a syntax error the sink holds partial results,
which the caller discards along with the failed file.

Memory stays bounded by one batch plus the largest single JSON token, whatever
the file size. This module is pure Python (no Django) so it can be tested and
benchmarked alone.

Behaviour decided here:

* `Record.index` is a running position over every record of the file, valid
  or not, across all servers: stable, and in step with skipped records.
* A record is checked timestamp first, then metrics in `METRICS` order; its
  first problem is its one `RecordIssue`. Naive timestamps are UTC, others are
  converted to UTC.
* Duplicate keys: the last one wins, except `metrics`: every `metrics` array of
  a server object is processed (streamed records cannot be taken back).
* A server entry skipped in a top-level array is a `RecordIssue` too, so
  `invalid_record_count` always equals the number of issues.
* The server label fallback `#<n>` is the entry's position in the top-level
  array (`#0` for a top-level object), the number its pointers use.
* One rule per metric (a later one replaces an earlier one); rules for names
  outside `METRICS` are ignored.
* `depth` counts nested containers: 0 for a scalar, 1 for `[]`. A JSON
  summary's `key_count` counts members as written, duplicates included.
* The summary lists at most `MAX_SUMMARY_SERVERS` servers; `server_count`
  gives the total.
* Progress restarts from 0.0 for the strict pass.
* A UTF-8 BOM counts in byte offsets but not in columns.
"""

import gc
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import compress, count
from operator import itemgetter
from typing import Any, BinaryIO, NamedTuple, Protocol

import msgspec
from msgspec import UNSET

from .jsonread import (
    CallerError,
    LooseRecord,
    Progress,
    RecordWindows,
    Unsafe,
    read,
    read_strict,
)
from .jsonstrict import CHUNK_SIZE, MAX_DEPTH, MAX_NUMBER_LENGTH, JSONSyntaxError
from .problems import TYPE_NAMES, pointer, record_problem, utc_timestamp
from .summary import MetricStats, anomaly_text

__all__ = [
    "BATCH_SIZE",
    "CHUNK_SIZE",
    "DEFAULT_RULES",
    "MAX_DEPTH",
    "MAX_NUMBER_LENGTH",
    "MAX_SUMMARY_SERVERS",
    "MAX_TEXT_LENGTH",
    "METRICS",
    "Anomaly",
    "DocumentInvalid",
    "DocumentMalformed",
    "Outcome",
    "ProcessingError",
    "Record",
    "RecordIssue",
    "Rule",
    "Sink",
    "anomaly_text",
    "process",
]

METRICS = (
    "cpu_usage",
    "memory_usage",
    "disk_read",
    "disk_write",
    "network_in",
    "network_out",
    "response_time",
)
BATCH_SIZE = 5000
MAX_TEXT_LENGTH = 255
MAX_SUMMARY_SERVERS = 1000

Value = int | float


class Rule(NamedTuple):
    """An inclusive range a metric must stay in."""

    metric: str
    low: float
    high: float


class Record(NamedTuple):
    """A valid metrics record, in the column order PostgreSQL COPY receives."""

    index: int
    server: str
    timestamp: datetime
    values: tuple[Value | None, ...]


class Anomaly(NamedTuple):
    """A metric value outside its rule's range."""

    record_index: int
    timestamp: datetime
    server: str
    metric: str
    value: Value
    low: float
    high: float


class RecordIssue(NamedTuple):
    """A skipped record (or server entry), located by an RFC 6901 pointer."""

    pointer: str
    message: str


DEFAULT_RULES = (
    Rule("cpu_usage", 0, 85),
    Rule("memory_usage", 0, 90),
    Rule("disk_read", 0, 500),
    Rule("disk_write", 0, 1000),
    Rule("network_in", 0, 1000),
    Rule("network_out", 0, 1000),
    Rule("response_time", 0, 200),
)


class Sink(Protocol):
    """Where results go, in batches of at most BATCH_SIZE."""

    def add_records(self, batch: list[Record]) -> None:
        """Store valid records."""
        ...

    def add_anomalies(self, batch: list[Anomaly]) -> None:
        """Store anomalies."""
        ...

    def add_issues(self, batch: list[RecordIssue]) -> None:
        """Store skipped-record issues."""
        ...

    def reset(self) -> None:
        """Drop everything stored so far: the document is being walked again."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing a document found."""

    kind: str
    summary: dict[str, Any]
    record_count: int
    invalid_record_count: int
    anomaly_count: int


class ProcessingError(Exception):
    """The document cannot be processed; position fields are None when unknown."""

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        offset: int | None = None,
        pointer: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.offset = offset
        self.pointer = pointer

    def as_dict(self) -> dict[str, Any]:
        """The error as stored on a failed file."""
        return {
            "message": self.message,
            "line": self.line,
            "column": self.column,
            "offset": self.offset,
            "pointer": self.pointer,
        }


class DocumentMalformed(ProcessingError):
    """Not strict JSON: line and column (1-based), byte offset (0-based)."""

    def __init__(self, message: str, line: int, column: int, offset: int) -> None:
        super().__init__(message, line=line, column=column, offset=offset)


class DocumentInvalid(ProcessingError):
    """Valid JSON whose structure cannot be processed, located by a pointer."""

    def __init__(self, message: str, pointer: str) -> None:
        super().__init__(message, pointer=pointer)


# --- internals -------------------------------------------------------------------


# Record keys the walker looks at: metric name -> slot, timestamp -> -1.
_FIELDS = {name: slot for slot, name in enumerate(METRICS)} | {"timestamp": -1}


def _clean(text: str) -> str:
    """Text PostgreSQL can store in a short column: no NUL, bounded length."""
    return text.replace("\x00", "")[:MAX_TEXT_LENGTH]


def _scalar_event(value: Any) -> tuple[str | None, Any]:
    """The event a decoded scalar came from, and its value; (None, None) if UNSET."""
    if value is UNSET:
        return None, None
    kind = type(value)
    if kind is int or kind is float:
        return "number", value
    if kind is str:
        return "string", value
    if kind is bool:
        return "boolean", value
    return "null", None


def _skip(nxt: Callable[[], tuple[str, Any]], depth: int) -> int:
    """Consume the rest of a container opened at `depth`; return its deepest level.

    Raises Unsafe past MAX_DEPTH: only yajl gets that far, the strict
    tokenizer stops there with a position.
    """
    level = deepest = depth
    while True:
        event = nxt()[0]
        if event == "start_map" or event == "start_array":
            level += 1
            if level > deepest:
                deepest = level
                if deepest > MAX_DEPTH:
                    raise Unsafe
        elif event == "end_map" or event == "end_array":
            level -= 1
            if level < depth:
                return deepest


class _ServerObject(NamedTuple):
    """What walking one object found."""

    key_count: int
    has_metrics_array: bool
    metrics_type: str | None  # type of a non-array `metrics` value, if any


class _Walk:
    """One walk over a document's events, feeding the sink."""

    def __init__(
        self,
        events: Iterator[tuple[str, Any]],
        rules: Iterable[Rule],
        sink: Sink,
        *,
        strict: bool,
        windows: RecordWindows | None = None,
    ) -> None:
        self.events = events
        self.nxt = events.__next__
        self.pairs = zip(events, events, strict=False)
        # yajl refuses numbers that overflow a double; only the strict
        # tokenizer turns them into infinities that records must reject.
        self.check_finite = strict
        self.windows = windows
        self.sink = sink
        bounds = {rule.metric: (rule.low, rule.high) for rule in rules}
        self.checks = tuple(
            (slot, name, *bounds[name])
            for slot, name in enumerate(METRICS)
            if name in bounds
        )
        self.depth = 0
        self.index = 0
        self.records: list[Record] = []
        self.anomalies: list[Anomaly] = []
        self.issues: list[RecordIssue] = []
        self.record_count = 0
        self.issue_count = 0
        self.anomaly_count = 0
        self.anomalies_by_metric: Counter[str] = Counter()
        self.servers: list[dict[str, Any]] = []
        self.server_count = 0
        self.stats = MetricStats(METRICS)

    def run(self, size_of: Callable[[], int]) -> Outcome:
        """Walk the whole document and return its outcome."""
        nxt = self.nxt
        event, value = nxt()
        failure: DocumentInvalid | None = None
        empty_pointer = ""
        if event == "start_map":
            self.depth = 1
            found = self._object(1, (), 0)
            is_servers = found.has_metrics_array
            if not is_servers and found.metrics_type is not None:
                failure = DocumentInvalid("metrics must be an array", "/metrics")
            json_summary: dict[str, Any] = {
                "top_level_type": "object",
                "key_count": found.key_count,
            }
            empty_pointer = "/metrics"
        elif event == "start_array":
            self.depth = 1
            is_servers, item_count = self._array()
            json_summary = {"top_level_type": "array", "item_count": item_count}
        else:
            is_servers = False
            json_summary = {"top_level_type": TYPE_NAMES[event]}
        # Pulling past the end lets the parser check there is nothing after it.
        next(self.events, None)
        self._flush()
        if failure is not None:
            raise failure
        if not is_servers:
            summary = json_summary | {"depth": self.depth, "size": size_of()}
            return Outcome("json", summary, 0, 0, 0)
        if self.record_count == 0:
            raise DocumentInvalid("no valid metrics record", empty_pointer)
        return Outcome(
            "server_metrics",
            self._summary(size_of()),
            self.record_count,
            self.issue_count,
            self.anomaly_count,
        )

    def _array(self) -> tuple[bool, int]:
        """Walk a top-level array; return whether it holds servers, and its length."""
        nxt = self.nxt
        is_servers = False
        position = 0
        while True:
            event, value = nxt()
            if event == "end_array":
                return is_servers, position
            if event == "start_map" and (position == 0 or is_servers):
                found = self._object(2, (position,), position)
                if position == 0:
                    is_servers = found.metrics_type is not None or (
                        found.has_metrics_array
                    )
                if is_servers and not found.has_metrics_array:
                    if found.metrics_type is None:
                        reason = "metrics is required"
                    else:
                        reason = f"metrics must be an array, got {found.metrics_type}"
                    self._issue(pointer(position), reason)
            else:
                if is_servers:
                    got = TYPE_NAMES[event]
                    self._issue(
                        pointer(position), f"server must be an object, got {got}"
                    )
                if event == "start_map" or event == "start_array":
                    self.depth = max(self.depth, _skip(nxt, 2))
            position += 1

    def _object(
        self, depth: int, where: tuple[int, ...], ordinal: int
    ) -> _ServerObject:
        """Walk an object that may be a server, processing its metrics arrays."""
        nxt = self.nxt
        self.depth = max(self.depth, depth)
        key_count = 0
        server_id = server_name = location = None
        metrics_type = None
        label = None
        entry: dict[str, Any] | None = None
        valid = 0
        while True:
            event, key = nxt()
            if event == "end_map":
                break
            key_count += 1
            event, value = nxt()
            if key == "metrics" and event == "start_array":
                if label is None:
                    if isinstance(server_id, str):
                        label = _clean(server_id)
                    elif isinstance(server_name, str):
                        label = _clean(server_name)
                    else:
                        label = f"#{ordinal}"
                    self.server_count += 1
                    if len(self.servers) < MAX_SUMMARY_SERVERS:
                        entry = {}
                        self.servers.append(entry)
                valid += self._metrics(label, (*where, "metrics"), depth + 1)
                continue
            if key == "metrics":
                metrics_type = TYPE_NAMES[event]
            elif key == "server_id":
                server_id = value if event == "string" else None
            elif key == "server_name":
                server_name = value if event == "string" else None
            elif key == "location":
                location = value if event == "string" else None
            if event == "start_map" or event == "start_array":
                self.depth = max(self.depth, _skip(nxt, depth + 1))
        if entry is not None:
            entry.update(
                id=None if server_id is None else _clean(server_id),
                name=None if server_name is None else _clean(server_name),
                location=None if location is None else _clean(location),
                record_count=valid,
            )
        return _ServerObject(key_count, label is not None, metrics_type)

    def _metrics(self, label: str, where: tuple[int | str, ...], depth: int) -> int:
        """Walk one metrics array (opened at `depth`); return its valid records.

        The hot path: everything it touches per record is a local, and a
        record's members are pulled as (key, value) event pairs by `zip`.
        """
        nxt = self.nxt
        pairs = self.pairs
        records = self.records
        add_record = records.append
        add_anomaly = self.anomalies.append
        checks = self.checks
        check_finite = self.check_finite
        fields = _FIELDS
        new = tuple.__new__
        record_type = Record
        anomaly_type = Anomaly
        infinity = math.inf
        type_names = TYPE_NAMES
        slot_count = len(METRICS)
        index = self.index
        record_depth = depth + 1
        position = 0
        valid = 0
        non_objects = 0
        windows = self.windows
        if windows is not None:
            windows.depth = depth
        event, value = nxt()
        while event != "end_array":
            if event == "records":
                self.index = index
                taken = self._window(value, label, where, position)
                valid += taken
                index += len(value)
                position += len(value)
                # A flush may have started new lists.
                records = self.records
                add_record = records.append
                add_anomaly = self.anomalies.append
                event, value = nxt()
                continue
            if event != "start_map":
                message = f"record must be an object, got {type_names[event]}"
                self._issue(pointer(*where, position), message)
                if event == "start_array":
                    self.depth = max(self.depth, _skip(nxt, record_depth))
                non_objects += 1
                index += 1
                position += 1
                event, value = nxt()
                continue
            values: list[Any] = [None] * slot_count
            stamp_event = stamp_text = None
            suspect = False
            # Members come in (map_key, value) pairs; the pair that ends the
            # record is (end_map, the event after it), so `event, value` leave
            # the loop holding the next record's first event.
            for (key_event, key), (event, value) in pairs:
                if key_event != "map_key":
                    break
                slot = fields.get(key)
                if slot is None:
                    if event == "start_map" or event == "start_array":
                        self.depth = max(self.depth, _skip(nxt, record_depth + 1))
                elif slot >= 0:
                    if event == "number":
                        values[slot] = value
                    else:
                        # A type name in place of the number: a later duplicate
                        # key may still replace it, so judge at the end.
                        suspect = True
                        values[slot] = type_names[event]
                        if event == "start_map" or event == "start_array":
                            self.depth = max(self.depth, _skip(nxt, record_depth + 1))
                else:
                    stamp_event = event
                    stamp_text = value
                    if event == "start_map" or event == "start_array":
                        self.depth = max(self.depth, _skip(nxt, record_depth + 1))
            if check_finite and (infinity in values or -infinity in values):
                suspect = True
            stamp = utc_timestamp(stamp_text) if stamp_event == "string" else None
            if stamp is None or suspect:
                problem = record_problem(
                    stamp_event, stamp_text, stamp, values, METRICS
                )
                if problem is not None:
                    field, message = problem
                    self._issue(pointer(*where, position, field), message)
                    index += 1
                    position += 1
                    continue
            for slot, metric, low, high in checks:
                number = values[slot]
                if number is not None and (number < low or number > high):
                    add_anomaly(
                        new(
                            anomaly_type,
                            (index, stamp, label, metric, number, low, high),
                        )
                    )
            add_record(new(record_type, (index, label, stamp, tuple(values))))
            valid += 1
            index += 1
            position += 1
            if len(records) >= BATCH_SIZE:
                self._flush_records()
                # The flush started new lists.
                records = self.records
                add_record = records.append
                add_anomaly = self.anomalies.append
        if windows is not None:
            windows.depth = None
        self.index = index
        self.record_count += valid
        self.depth = max(self.depth, depth if position == non_objects else record_depth)
        return valid

    def _window(
        self, structs: list[Any], label: str, where: tuple[int | str, ...], first: int
    ) -> int:
        """Check and keep a run of records decoded by msgspec; return the valid ones.

        The same checks as `_metrics` makes on events, and the same results in
        the same order, made a run at a time: a run of `TypedRecord`s (every
        field present, a timestamp string and numbers) needs only its
        timestamps parsed and its metric columns compared with the rules. A run
        of `LooseRecord`s goes record by record through the walker's own checks.
        msgspec refuses numbers beyond a double, so no value is infinite here.
        """
        if type(structs[0]) is LooseRecord:
            return self._loose_window(structs, where, label, first)
        from_iso = datetime.fromisoformat
        utc = UTC
        new = tuple.__new__
        record_type = Record
        index = self.index
        position = first
        kept: list[Record] = []
        keep = kept.append
        for fields in map(msgspec.structs.astuple, structs):
            try:  # problems.utc_timestamp, inlined: this loop is the hot path
                stamp = from_iso(fields[0])
                if stamp.tzinfo is not utc:
                    if stamp.tzinfo is None:
                        stamp = stamp.replace(tzinfo=utc)
                    else:
                        stamp = stamp.astimezone(utc)
            except (ValueError, OverflowError):
                field, message = record_problem(
                    "string", fields[0], None, list(fields[1:]), METRICS
                )
                self._issue(pointer(*where, position, field), message)
            else:
                keep(new(record_type, (index, label, stamp, fields[1:])))
            index += 1
            position += 1
        self.index = index
        self._keep(kept)
        return len(kept)

    def _keep(self, kept: list[Record]) -> None:
        """Records whose metrics are all numbers, with their anomalies, in order.

        Into the batches at their boundaries, as record by record.
        """
        start = 0
        while start < len(kept):
            room = BATCH_SIZE - len(self.records)
            part = kept[start : start + room]
            self._check_columns(part)
            self.records += part
            start += room
            if len(self.records) >= BATCH_SIZE:
                self._flush_records()

    def _check_columns(self, records: list[Record]) -> None:
        """The anomalies of records whose metrics are all numbers, in record order."""
        if not records:
            return
        columns = list(zip(*[record[3] for record in records], strict=True))
        found = []
        for order, (slot, metric, low, high) in enumerate(self.checks):
            column = columns[slot]
            # float's own comparisons, mapped in C (an int's would answer
            # NotImplemented for a float), on the sides the column crosses.
            outside = []
            if min(column) < low:
                outside.append(float(low).__gt__)
            if max(column) > high:
                outside.append(float(high).__lt__)
            for test in outside:
                found += [
                    (position, order, metric, column[position], low, high)
                    for position in compress(count(), map(test, column))
                ]
        found.sort(key=itemgetter(0, 1))
        new = tuple.__new__
        self.anomalies += [
            new(Anomaly, (record[0], record[2], record[1], metric, number, low, high))
            for position, _, metric, number, low, high in found
            for record in (records[position],)
        ]

    def _loose_window(
        self, structs: list[Any], where: tuple[int | str, ...], label: str, first: int
    ) -> int:
        """A run of `LooseRecord`s, checked record by record like events."""
        checks = self.checks
        index = self.index
        position = first
        valid = 0
        for struct in structs:
            fields = msgspec.structs.astuple(struct)
            stamp_event, stamp_text = _scalar_event(fields[0])
            kinds = [_scalar_event(v)[0] for v in fields[1:]]
            # Absent is None, a number itself, anything else its type's name.
            values = tuple(
                None if kind is None else v if kind == "number" else TYPE_NAMES[kind]
                for v, kind in zip(fields[1:], kinds, strict=True)
            )
            stamp = utc_timestamp(stamp_text) if stamp_event == "string" else None
            problem = record_problem(
                stamp_event, stamp_text, stamp, list(values), METRICS
            )
            if problem is not None:
                field, message = problem
                self._issue(pointer(*where, position, field), message)
            else:
                for slot, metric, low, high in checks:
                    number = values[slot]
                    if number is not None and (number < low or number > high):
                        self.anomalies.append(
                            Anomaly(index, stamp, label, metric, number, low, high)
                        )
                self.records.append(Record(index, label, stamp, values))
                valid += 1
                if len(self.records) >= BATCH_SIZE:
                    self._flush_records()
            index += 1
            position += 1
        self.index = index
        return valid

    def _issue(self, pointer: str, message: str) -> None:
        self.issues.append(RecordIssue(pointer, message))
        self.issue_count += 1
        if len(self.issues) >= BATCH_SIZE:
            self._flush_issues()

    def _flush(self) -> None:
        """Hand every pending batch to the sink."""
        self._flush_records()
        self._flush_issues()

    def _flush_records(self) -> None:
        """Hand pending records and anomalies to the sink, folding them into stats."""
        records, anomalies = self.records, self.anomalies
        if records:
            self.stats.fold(records)
        self.anomaly_count += len(anomalies)
        self.anomalies_by_metric.update(map(itemgetter(3), anomalies))
        try:
            if records:
                self.sink.add_records(records)
            # Up to len(METRICS) anomalies per record: split to the batch size.
            for start in range(0, len(anomalies), BATCH_SIZE):
                self.sink.add_anomalies(anomalies[start : start + BATCH_SIZE])
        except Exception as exc:
            raise CallerError(exc) from exc
        # New lists rather than clear(): the sink may keep what it was given.
        self.records, self.anomalies = [], []

    def _flush_issues(self) -> None:
        """Hand pending issues to the sink."""
        if self.issues:
            try:
                self.sink.add_issues(self.issues)
            except Exception as exc:
                raise CallerError(exc) from exc
            self.issues = []

    def _summary(self, size: int) -> dict[str, Any]:
        return {
            "servers": self.servers,
            "server_count": self.server_count,
            "record_count": self.record_count,
            "invalid_record_count": self.issue_count,
            "anomaly_count": self.anomaly_count,
            **self.stats.summary(),
            "anomalies_by_metric": {
                name: self.anomalies_by_metric[name]
                for name in METRICS
                if name in self.anomalies_by_metric
            },
            "size": size,
            "depth": self.depth,
        }


def process(
    open_stream: Callable[[], BinaryIO],
    *,
    size: int,
    rules: Iterable[Rule],
    sink: Sink,
    on_progress: Callable[[float], None] | None = None,
) -> Outcome:
    """Process the JSON document `open_stream()` returns, feeding `sink`.

    `open_stream` is called once per pass and must return a fresh binary
    stream each time. `on_progress` gets the fraction of `size` (bytes) read
    by the current pass, once per chunk, and 1.0 on success; a strict second
    pass starts again from 0.0. Raises DocumentMalformed or
    DocumentInvalid for a document that cannot be processed; exceptions from
    the stream, the sink or the callback propagate unchanged.
    """
    with _collector_paused():
        return _process(
            open_stream,
            size=size,
            rules=tuple(rules),
            sink=sink,
            on_progress=on_progress,
        )


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector, restoring its state afterwards.

    A walk allocates millions of short-lived tuples, all freed by reference
    counting and none in a cycle, yet the collector would spend about a third
    of the run scanning them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _process(
    open_stream: Callable[[], BinaryIO],
    *,
    size: int,
    rules: tuple[Rule, ...],
    sink: Sink,
    on_progress: Callable[[float], None] | None,
) -> Outcome:
    """`process` itself, fast pass first, then the strict one if need be."""
    progress = Progress(size, on_progress)

    def fast(stream: BinaryIO) -> Outcome:
        reading = read(stream, progress)
        # The records path is the strict tokenizer: its numbers may be infinite,
        # as on the strict pass.
        exact = reading.windows is not None
        walk = _Walk(reading.events, rules, sink, strict=exact, windows=reading.windows)
        return walk.run(reading.size_of)

    def strict(stream: BinaryIO) -> Outcome:
        events, size_of = read_strict(stream, progress)
        try:
            return _Walk(events, rules, sink, strict=True).run(size_of)
        except JSONSyntaxError as exc:
            raise DocumentMalformed(
                exc.message, exc.line, exc.column, exc.offset
            ) from None

    outcome = fast_then_strict(open_stream, sink, fast, strict)
    progress.finish()
    return outcome


def fast_then_strict(
    open_stream: Callable[[], BinaryIO],
    sink: Sink,
    fast: Callable[[BinaryIO], Outcome],
    strict: Callable[[BinaryIO], Outcome],
) -> Outcome:
    """`fast` on a stream; on any doubt, `strict` on a fresh one, the sink reset.

    Whatever goes wrong in the fast pass (a yajl error, a quirk the prefilter
    caught, nesting too deep) the strict pass decides, but for the caller's own
    errors (`CallerError`, re-raised as they were) and an invalid document, which
    the fast pass raises only once it read to the end without complaint.
    """
    with closing(open_stream()) as stream:
        try:
            return fast(stream)
        except CallerError as wrapped:
            raise wrapped.error from None
        except DocumentInvalid:
            raise
        except Exception:
            pass  # the strict pass decides
    sink.reset()
    with closing(open_stream()) as stream:
        try:
            return strict(stream)
        except CallerError as wrapped:
            raise wrapped.error from None
