"""The processing engine: stream an uploaded JSON file into records and anomalies.

`process()` reads the document with ijson's C parser (yajl) behind a cheap
prefilter for what yajl gets wrong, walking its events with a pull-style
walker that validates server-metrics records, checks them against the anomaly
rules and hands them to a sink in batches. Should that fast pass fail for any
reason, the strict tokenizer of `jsonstrict` reads the file again and the walk
restarts from scratch after `sink.reset()`: a syntax error becomes
`DocumentMalformed` with its position, while a valid document that yajl
refused (an integer beyond 64 bits, say) is processed by this strict pass, so
results never depend on yajl's quirks. The strict pass validates and walks at
once (one read, not two); if it meets a syntax error the sink holds partial
results, which the caller discards along with the failed file.

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
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, BinaryIO, NamedTuple, Protocol

import ijson

from .jsonstrict import (
    BOM,
    CHUNK_SIZE,
    MAX_DEPTH,
    MAX_NUMBER_LENGTH,
    JSONSyntaxError,
)
from .jsonstrict import basic_parse as strict_parse

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


class _Unsafe(Exception):
    """The fast pass cannot be trusted with this document."""


class _CallerError(Exception):
    """An exception from the caller's stream, sink or progress callback.

    Wrapped so the fast pass's catch-all cannot mistake it for a parse failure;
    `process` re-raises the original.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


_TYPE_NAMES = {
    "start_map": "object",
    "start_array": "array",
    "string": "string",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}
# Record keys the walker looks at: metric name -> slot, timestamp -> -1.
_FIELDS = {name: slot for slot, name in enumerate(METRICS)} | {"timestamp": -1}

# Prefilter: byte classes for one bytes.translate(), much faster than a regex
# scan. Number-like bytes become "9" (to find over-long runs), vertical tab and
# form feed become "!" (yajl takes them for whitespace, JSON does not).
_PREFILTER_TABLE = bytes(
    0x39 if byte in b"-+0123456789.eE" else 0x21 if byte in b"\x0b\x0c" else 0x20
    for byte in range(256)
)
# Finite doubles can add up to more than a double holds (1e308 + 1e308): such a
# metric's sum is kept scaled down by 2**-600, far from both ends of the range.
_SUM_SCALE = 600
_LONG_NUMBER = b"9" * (MAX_NUMBER_LENGTH + 1)
_OVERLAP = 128
# yajl turns a lone high surrogate escape into "?" and pairs a high one with any
# following \u escape; low ones it already refuses, but cheaply checked too.
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
# Quote-free stretches longer than this go to the strict tokenizer (linear),
# as yajl might spend quadratic time on them.
_LONG_TOKEN = 2 * 1024 * 1024
# A high escape this close to the end of the data seen so far may still be
# paired by the next chunk.
_ESCAPE_PAIR_LENGTH = 12


def _clean(text: str) -> str:
    """Text PostgreSQL can store in a short column: no NUL, bounded length."""
    return text.replace("\x00", "")[:MAX_TEXT_LENGTH]


def _shorten(text: str, limit: int = 60) -> str:
    """A bounded quotation of document text for a message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _iso(moment: datetime) -> str:
    """An ISO 8601 UTC timestamp with a Z, microseconds only when present."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat() + "Z"


def _number_text(value: float) -> str:
    """A number as people write it: no trailing .0 on integral floats."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _escape_token(token: str) -> str:
    """One RFC 6901 reference token."""
    return token.replace("~", "~0").replace("/", "~1")


def _pointer(*tokens: str | int) -> str:
    """An RFC 6901 pointer from keys and array indexes."""
    return "".join(
        f"/{token}" if isinstance(token, int) else "/" + _escape_token(token)
        for token in tokens
    )


class _Progress:
    """Reports the bytes read by the current pass as a fraction of the size.

    A strict second pass starts again from 0.0: holding the first pass's
    fraction instead would freeze it near 1.0 for the slower pass.
    """

    def __init__(self, size: int, report: Callable[[float], None] | None) -> None:
        self.size = size
        self.report = report

    def __call__(self, count: int) -> None:
        if self.report is not None and self.size > 0:
            self._send(min(count / self.size, 1.0))

    def finish(self) -> None:
        """Report completion."""
        if self.report is not None:
            self._send(1.0)

    def _send(self, fraction: float) -> None:
        try:
            self.report(fraction)
        except Exception as exc:
            raise _CallerError(exc) from exc


class _Reader:
    """The stream as both parsers read it: bytes counted, progress reported."""

    def __init__(self, stream: BinaryIO, progress: _Progress) -> None:
        self.stream = stream
        self.progress = progress
        self.count = 0

    def _next_chunk(self, size: int) -> bytes:
        try:
            chunk = self.stream.read(size)
        except Exception as exc:
            raise _CallerError(exc) from exc
        self.count += len(chunk)
        self.progress(self.count)
        return chunk

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        """Up to `size` bytes; b"" at the end."""
        if size == 0:
            # ijson probes with read(0) to tell binary from text streams.
            return b""
        return self._next_chunk(size if size > 0 else CHUNK_SIZE)


class _FastReader(_Reader):
    """Feeds yajl: skips a UTF-8 BOM and refuses what yajl would get wrong."""

    def __init__(self, stream: BinaryIO, progress: _Progress) -> None:
        super().__init__(stream, progress)
        self.started = False
        self.ended = False
        self.tail = b""
        self.since_quote = 0

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        """Up to `size` bytes, checked; raises _Unsafe on a prefilter hit."""
        if size == 0 or self.ended:
            return b""
        size = size if size > 0 else CHUNK_SIZE
        chunk = self._next_chunk(size)
        if not self.started:
            self.started = True
            while chunk and len(chunk) < len(BOM):
                more = self._next_chunk(size)
                if not more:
                    break
                chunk += more
            if chunk.startswith(BOM):
                chunk = chunk[len(BOM) :]
                if not chunk:
                    # b"" would end yajl's input before the rest was read.
                    return self.read(size)
        tail = self.tail
        # yajl lexes a token that spans chunks again from its start with every
        # chunk: quadratic for a long string. A chunk holding a quote that is
        # not escaped ends the current token as far as this bound goes (a quote
        # after an escaped backslash passes for escaped: the safe mistake).
        escaped = chunk.count(b'\\"') + (chunk[:1] == b'"' and tail[-1:] == b"\\")
        if chunk.count(b'"') > escaped:
            self.since_quote = 0
        else:
            self.since_quote += len(chunk)
            if self.since_quote > _LONG_TOKEN:
                raise _Unsafe
        # Overlap with the previous chunk so nothing spanning the seam is missed.
        data = tail + chunk
        # Escapes starting in the tail were judged with the previous chunk,
        # except the last few, which waited for what follows them.
        start = max(len(tail) - _ESCAPE_PAIR_LENGTH, 0)
        if _prefilter_hit(data, start, final=not chunk):
            raise _Unsafe
        self.tail = data[-_OVERLAP:]
        if not chunk:
            # yajl ignores an unterminated string after the document ('{} "x'):
            # a final newline is whitespace after a valid document but an
            # error inside a string. It is not counted as read.
            self.ended = True
            return b"\n"
        return chunk


def _prefilter_hit(data: bytes, start: int, *, final: bool) -> bool:
    """Whether `data` holds something yajl would accept wrongly or mangle.

    Surrogate escapes are judged from `start` on, and (unless `final`) not in
    the last bytes, where the low half of a pair may still be on its way.
    """
    classes = data.translate(_PREFILTER_TABLE)
    if b"!" in classes or _LONG_NUMBER in classes:
        return True
    if b"\\u" not in data:
        return False
    limit = len(data) if final else len(data) - _ESCAPE_PAIR_LENGTH
    match = _LONE_SURROGATE.search(data, start)
    return match is not None and match.start() < limit


def _skip(nxt: Callable[[], tuple[str, Any]], depth: int) -> int:
    """Consume the rest of a container opened at `depth`; return its deepest level.

    Raises _Unsafe past MAX_DEPTH: only yajl gets that far, the strict
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
                    raise _Unsafe
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
    ) -> None:
        self.events = events
        self.nxt = events.__next__
        self.pairs = zip(events, events, strict=False)
        # yajl refuses numbers that overflow a double; only the strict
        # tokenizer turns them into infinities that records must reject.
        self.check_finite = strict
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
        # Per metric slot: [min, max, sum, count, scaled], None until seen; the sum
        # is of the values times 2**-_SUM_SCALE once it is `scaled`.
        self.stats: list[list[Any] | None] = [None] * len(METRICS)
        self.first: datetime | None = None
        self.last: datetime | None = None

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
            json_summary = {"top_level_type": _TYPE_NAMES[event]}
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
                    self._issue(_pointer(position), reason)
            else:
                if is_servers:
                    got = _TYPE_NAMES[event]
                    self._issue(
                        _pointer(position), f"server must be an object, got {got}"
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
                metrics_type = _TYPE_NAMES[event]
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
        from_iso = datetime.fromisoformat
        utc = UTC
        new = tuple.__new__
        record_type = Record
        anomaly_type = Anomaly
        infinity = math.inf
        type_names = _TYPE_NAMES
        slot_count = len(METRICS)
        index = self.index
        record_depth = depth + 1
        position = 0
        valid = 0
        non_objects = 0
        event, value = nxt()
        while event != "end_array":
            if event != "start_map":
                message = f"record must be an object, got {type_names[event]}"
                self._issue(_pointer(*where, position), message)
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
            stamp = None
            if stamp_event == "string":
                try:
                    stamp = from_iso(stamp_text)
                    if stamp.tzinfo is not utc:
                        if stamp.tzinfo is None:
                            stamp = stamp.replace(tzinfo=utc)
                        else:
                            stamp = stamp.astimezone(utc)
                except (ValueError, OverflowError):
                    stamp = None
            if stamp is None or suspect:
                problem = _record_problem(stamp_event, stamp_text, stamp, values)
                if problem is not None:
                    field, message = problem
                    self._issue(_pointer(*where, position, field), message)
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
        self.index = index
        self.record_count += valid
        self.depth = max(self.depth, depth if position == non_objects else record_depth)
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
            self._fold(records)
        self.anomaly_count += len(anomalies)
        self.anomalies_by_metric.update(map(itemgetter(3), anomalies))
        try:
            if records:
                self.sink.add_records(records)
            # Up to len(METRICS) anomalies per record: split to the batch size.
            for start in range(0, len(anomalies), BATCH_SIZE):
                self.sink.add_anomalies(anomalies[start : start + BATCH_SIZE])
        except Exception as exc:
            raise _CallerError(exc) from exc
        # New lists rather than clear(): the sink may keep what it was given.
        self.records, self.anomalies = [], []

    def _flush_issues(self) -> None:
        """Hand pending issues to the sink."""
        if self.issues:
            try:
                self.sink.add_issues(self.issues)
            except Exception as exc:
                raise _CallerError(exc) from exc
            self.issues = []

    def _fold(self, records: list[Record]) -> None:
        """Fold a batch into per-metric min/max/sum/count and the time span."""
        stamps = [record[2] for record in records]
        earliest, latest = min(stamps), max(stamps)
        if self.first is None or earliest < self.first:
            self.first = earliest
        if self.last is None or latest > self.last:
            self.last = latest
        columns = zip(*[record[3] for record in records], strict=True)
        for slot, column in enumerate(columns):
            present = [number for number in column if number is not None]
            if not present:
                continue
            stats = self.stats[slot]
            if stats is None:
                stats = self.stats[slot] = [present[0], present[0], 0.0, 0, False]
            stats[0] = min(stats[0], *present)
            stats[1] = max(stats[1], *present)
            stats[3] += len(present)
            if not stats[4]:
                try:
                    total = stats[2] + math.fsum(present)
                except OverflowError:
                    total = math.inf
                if not math.isinf(total):
                    stats[2] = total
                    continue
                # Finite doubles whose sum is not: from here on sum them scaled.
                stats[2], stats[4] = math.ldexp(stats[2], -_SUM_SCALE), True
            stats[2] += math.fsum([math.ldexp(n, -_SUM_SCALE) for n in present])

    def _summary(self, size: int) -> dict[str, Any]:
        metrics = {}
        for name, stats in zip(METRICS, self.stats, strict=True):
            if stats is not None:
                low, high, total, count, scaled = stats
                mean = (
                    math.ldexp(total / count, _SUM_SCALE) if scaled else total / count
                )
                metrics[name] = {
                    "min": low,
                    "max": high,
                    # Rounding cannot take the mean outside the values' range.
                    "mean": min(max(mean, low), high),
                    "count": count,
                }
        return {
            "servers": self.servers,
            "server_count": self.server_count,
            "record_count": self.record_count,
            "invalid_record_count": self.issue_count,
            "anomaly_count": self.anomaly_count,
            "first_timestamp": None if self.first is None else _iso(self.first),
            "last_timestamp": None if self.last is None else _iso(self.last),
            "metrics": metrics,
            "anomalies_by_metric": {
                name: self.anomalies_by_metric[name]
                for name in METRICS
                if name in self.anomalies_by_metric
            },
            "size": size,
            "depth": self.depth,
        }


def _record_problem(
    stamp_event: str | None,
    stamp_text: Any,
    stamp: datetime | None,
    values: list[Any],
) -> tuple[str, str] | None:
    """The first problem of a record, as (field, message), or None if it is valid."""
    if stamp_event is None:
        return "timestamp", "timestamp is required"
    if stamp_event != "string":
        return (
            "timestamp",
            f"timestamp must be a string, got {_TYPE_NAMES[stamp_event]}",
        )
    if stamp is None:
        try:
            datetime.fromisoformat(stamp_text)
        except (ValueError, OverflowError):
            return "timestamp", f"timestamp is not ISO 8601: {_shorten(stamp_text)}"
        # It parsed, so converting its offset to UTC went out of range.
        return "timestamp", f"timestamp is out of range: {_shorten(stamp_text)}"
    for name, value in zip(METRICS, values, strict=True):
        if isinstance(value, float) and not math.isfinite(value):
            return name, f"{name} must be a finite number"
        if isinstance(value, str):
            return name, f"{name} must be a number, got {value}"
    return None


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
    progress = _Progress(size, on_progress)
    stream = open_stream()
    with closing(stream):
        reader = _FastReader(stream, progress)
        events = ijson.basic_parse(reader, use_float=True, buf_size=CHUNK_SIZE)
        try:
            outcome = _Walk(events, rules, sink, strict=False).run(lambda: reader.count)
        except _CallerError as wrapped:
            raise wrapped.error from None
        except DocumentInvalid:
            # Raised only once the parser reached the end without complaint.
            raise
        except Exception:
            # Whatever went wrong (a yajl error, a quirk the prefilter caught,
            # nesting too deep), the strict pass decides.
            outcome = None
    if outcome is not None:
        progress.finish()
        return outcome
    sink.reset()
    stream = open_stream()
    with closing(stream):
        reader = _Reader(stream, progress)
        try:
            outcome = _Walk(strict_parse(reader), rules, sink, strict=True).run(
                lambda: reader.count
            )
        except _CallerError as wrapped:
            raise wrapped.error from None
        except JSONSyntaxError as exc:
            raise DocumentMalformed(
                exc.message, exc.line, exc.column, exc.offset
            ) from None
    progress.finish()
    return outcome


def anomaly_text(
    anomalies: Iterable[Any], limit: int = 20, total: int | None = None
) -> str:
    """Anomalies as one line: "cpu_usage out of range: 800 at 2024-...Z, ...".

    Takes `Anomaly` tuples or any objects with `metric`, `value` and
    `timestamp`. At most `limit` are listed; when `total` (default: how many
    were given) is larger, ", ... and N more" follows.
    """
    items = []
    given = 0
    for anomaly in anomalies:
        given += 1
        if given <= limit:
            items.append(
                f"{anomaly.metric} out of range: {_number_text(anomaly.value)} "
                f"at {_iso(anomaly.timestamp)}"
            )
    more = (given if total is None else total) - len(items)
    if more > 0:
        items.append(f"... and {more} more")
    return ", ".join(items)
