"""JSON Lines / NDJSON: one JSON value per line, each a record or a server document.

`process(open_stream, ...)` is `engine.process` for JSON Lines: the same two
passes, the same walker for metrics arrays, the same record checks, sink and
outcome. Every line (split on LF, so CRLF works: CR is JSON whitespace) holds
exactly one JSON value, parsed as strictly as a document: RFC 8259, the same
number and nesting limits. Blank lines (only spaces, tabs or CR) are skipped.

* The fast pass hands each chunk's whole lines to msgspec (`jsonread.typed_lines`),
  which decodes a run of plain records at once as typed structs, up to the
  first line it cannot vouch for. That line, and any line it does not take,
  goes to yajl (ijson's push parser, several values allowed) behind
  `jsonread`'s prefilter, and is checked to have held one whole value and
  nothing else. Any doubt and the strict pass decides.
* The strict pass runs `jsonstrict` on each line, streamed, so a line of any
  length (a whole server document on one line) stays within bounded memory.
  A malformed line fails the file with its line, column (1-based) and byte
  offset (0-based) in the whole text.

What a line means:

* An object with a `metrics` array is a server document of the seed's shape;
  its records' pointers are `/<line>/metrics/<i>/<field>`.
* Any other object is one metrics record naming its server with `server_id` (a
  string; `server_name` and `location` are optional). It is checked like a
  document's record after its `server_id`; its pointer is `/<line>/<field>`.
* Anything else is an invalid record: `/<line>`, "record must be an object".

`<line>` is the 0-based line index, blank lines included (line number - 1).
Records of one server, whichever lines they come from, are one server of the
summary; distinct servers are counted up to `MAX_COUNTED_SERVERS`.
"""

import math
from collections.abc import Callable, Generator, Iterable, Iterator
from itertools import chain
from typing import Any, BinaryIO

import ijson
from ijson.utils import sendable_list
from msgspec import UNSET
from msgspec.structs import astuple

from .engine import (
    BATCH_SIZE,
    MAX_SUMMARY_SERVERS,
    METRICS,
    Anomaly,
    DocumentInvalid,
    DocumentMalformed,
    Outcome,
    Record,
    Rule,
    Sink,
    _clean,
    _collector_paused,
    _skip,
    _Walk,
    fast_then_strict,
)
from .jsonread import FastReader, Progress, Reader, TypedLine, Unsafe, typed_lines
from .jsonstrict import BOM, CHUNK_SIZE, JSONSyntaxError
from .jsonstrict import basic_parse as strict_parse
from .problems import TYPE_NAMES, pointer, record_problem, utc_timestamp

__all__ = ["MAX_COUNTED_SERVERS", "process"]

MAX_COUNTED_SERVERS = 100_000
_BLANK = b" \t\r"
# The strict tokenizer's words for a whole document, said of a line here.
_LINE_MESSAGES = {
    "Unexpected end of document": "Unexpected end of line (one JSON value per line)",
    "Extra data after the document": (
        "Extra data after the line's value (one JSON value per line)"
    ),
}

Event = tuple[str, Any]
# The event after each line's last one.
END_LINE = ("end_line", None)
# The event of a run of lines decoded as `TypedLine`s.
RECORDS = "records"
# How often msgspec tries a chunk's lines: after each line it leaves, the rest.
_TYPED_ATTEMPTS = 4
# A `TypedLine` as a tuple: the timestamp, the metrics, then the server's fields.
_SERVER = 1 + len(METRICS)
# A line's members the walker looks at: a metric's slot, or one of these.
_TIMESTAMP, _SERVER_ID, _SERVER_NAME, _LOCATION, _METRICS = range(-1, -6, -1)
_LINE_FIELDS = {name: slot for slot, name in enumerate(METRICS)} | {
    "timestamp": _TIMESTAMP,
    "server_id": _SERVER_ID,
    "server_name": _SERVER_NAME,
    "location": _LOCATION,
    "metrics": _METRICS,
}


def process(
    open_stream: Callable[[], BinaryIO],
    *,
    size: int,
    rules: Iterable[Rule],
    sink: Sink,
    on_progress: Callable[[float], None] | None = None,
) -> Outcome:
    """Process the JSON Lines text `open_stream()` returns, feeding `sink`.

    The contract of `engine.process`: `open_stream` is called once per pass,
    progress restarts from 0.0 for a strict pass, and DocumentMalformed or
    DocumentInvalid is raised for a text that cannot be processed.
    """
    rules = tuple(rules)
    progress = Progress(size, on_progress)
    with _collector_paused():
        outcome = fast_then_strict(
            open_stream,
            sink,
            lambda stream: _LinesWalk(rules, sink, strict=False).walk(
                _FastLines(stream, progress)
            ),
            lambda stream: _LinesWalk(rules, sink, strict=True).walk(
                _StrictLines(stream, progress)
            ),
        )
    progress.finish()
    return outcome


class _FastLines:
    """The lines' events: runs of plain records from msgspec, the rest from yajl.

    Iterating yields `(line index, events)`. For the whole lines of a chunk
    that `typed_lines` takes, one event: (RECORDS, their `TypedLine`s). For
    any other line that is not blank, its events from yajl (behind the
    prefilter) ending with END_LINE: the walker makes sure the line held one
    whole value and nothing else.
    """

    def __init__(self, stream: BinaryIO, progress: Progress) -> None:
        self.reader = FastReader(stream, progress)
        self.out = sendable_list()
        self.parser = ijson.basic_parse_coro(
            self.out, multiple_values=True, use_float=True
        )
        self.chunk = b""
        self.pos = 0

    def __iter__(self) -> Iterator[tuple[int, Iterator[Event]]]:
        number = 0
        while True:
            if self.pos >= len(self.chunk):
                self.chunk, self.pos = self.reader.read(CHUNK_SIZE, check=False), 0
                if not self.chunk:
                    self.reader.check(b"")
                    # Raises if the last value is incomplete, or there was none.
                    self.parser.close()
                    return
            last = self.chunk.rfind(b"\n", self.pos)
            if last >= self.pos:
                number = yield from self._whole_lines(number, last)
            else:
                yield number, self._long_line()
                number += 1

    def _whole_lines(
        self, number: int, last: int
    ) -> Generator[tuple[int, Iterator[Event]], None, int]:
        """The chunk's lines up to its newline at `last`; the next line's index.

        msgspec tries the lines ahead; the first it leaves goes to yajl, then it
        tries again, a few times for a chunk. yajl stands between two values at
        the start of a line, so it need not see the lines msgspec takes; what
        it does see is checked by the prefilter in one piece.
        """
        out, send, chunk = self.out, self.parser.send, self.chunk
        attempts = 0
        while self.pos <= last:
            if last > self.pos and attempts < _TYPED_ATTEMPTS:
                attempts += 1
                records, stop = typed_lines(chunk[self.pos : last])
                if records:
                    yield number, iter(((RECORDS, records),))
                    number += len(records)
                self.pos += stop
                if self.pos > last:
                    break
                until = chunk.find(b"\n", self.pos)
            else:
                until = last
            self.reader.check(chunk[self.pos : until + 1])
            while self.pos <= until:
                end = chunk.find(b"\n", self.pos)
                send(chunk[self.pos : end + 1])
                self.pos = end + 1
                if out:
                    out.append(END_LINE)
                    yield number, iter(out)
                    del out[:]
                number += 1
        return number

    def _long_line(self) -> Iterator[Event]:
        """The events of a line that goes on past the current chunk."""
        out, send = self.out, self.parser.send
        while True:
            end = self.chunk.find(b"\n", self.pos)
            stop = len(self.chunk) if end < 0 else end + 1
            piece = self.chunk[self.pos : stop]
            self.reader.check(piece)
            send(piece)
            self.pos = stop
            events = out[:]
            del out[:]
            yield from events
            if end >= 0:
                yield END_LINE
                return
            self.chunk, self.pos = self.reader.read(CHUNK_SIZE, check=False), 0
            if not self.chunk:
                # FastReader ends every text with a newline: never reached.
                raise Unsafe


class _LineStream:
    """One line of `_StrictLines` as a stream of its own: b"" at its newline."""

    def __init__(self, lines: "_StrictLines") -> None:
        self.lines = lines
        self.ended = False

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        """Up to `size` bytes of the line, without its newline."""
        if self.ended:
            return b""
        lines = self.lines
        if not lines.fill():
            self.ended = True
            return b""
        end = lines.buf.find(b"\n", lines.pos, lines.pos + size)
        stop = min(len(lines.buf), lines.pos + size) if end < 0 else end
        data = lines.buf[lines.pos : stop]
        lines.pos = stop
        if end >= 0:
            lines.pos += 1
            self.ended = True
        return data


class _StrictLines:
    """Each line parsed by `jsonstrict` on its own, its positions in the whole text.

    Leading blanks (and the file's BOM) are skipped before the tokenizer sees a
    line, so a blank line is never parsed and a BOM anywhere else is an error.
    """

    def __init__(self, stream: BinaryIO, progress: Progress) -> None:
        self.reader = Reader(stream, progress)
        self.buf = b""
        self.pos = 0
        self.base = 0  # offset of buf[0] in the text
        self.number = 0
        self.line_offset = 0  # where the current line's value starts
        self.line_column = 0  # columns skipped before it

    def fill(self, need: int = 1) -> bool:
        """Have at least `need` bytes after pos, if the text has them."""
        while len(self.buf) - self.pos < need:
            chunk = self.reader.read(CHUNK_SIZE)
            if not chunk:
                return self.pos < len(self.buf)
            self.base += self.pos
            self.buf = self.buf[self.pos :] + chunk
            self.pos = 0
        return True

    def __iter__(self) -> Iterator[tuple[int, Iterator[Event]]]:
        while self._start_line():
            stream = _LineStream(self)
            yield self.number, chain(strict_parse(stream), (END_LINE,))
            if not stream.ended:
                # The walker stopped at the value's end: the rest of the line.
                while stream.read(CHUNK_SIZE):
                    pass
            self.number += 1

    def _start_line(self) -> bool:
        """Skip blank lines and leading blanks; whether a value is up next."""
        column = 0
        while self.fill():
            at_start = self.base + self.pos == 0
            if at_start and self.fill(len(BOM)) and self.buf.startswith(BOM):
                self.pos += len(BOM)
                continue
            byte = self.buf[self.pos]
            if byte == 0x0A:
                self.pos += 1
                self.number += 1
                column = 0
            elif byte in _BLANK:
                self.pos += 1
                column += 1
            else:
                self.line_offset = self.base + self.pos
                self.line_column = column
                # The tokenizer would skip a BOM as a document's first bytes.
                later = self.line_offset > 0 and self.fill(len(BOM))
                if later and self.buf.startswith(BOM, self.pos):
                    raise DocumentMalformed(
                        f"Unexpected character {BOM.decode()!r}",
                        self.number + 1,
                        column + 1,
                        self.line_offset,
                    )
                return True
        return False

    def malformed(self, error: JSONSyntaxError) -> DocumentMalformed:
        """The tokenizer's error on the current line, placed in the whole text."""
        return DocumentMalformed(
            _LINE_MESSAGES.get(error.message, error.message),
            self.number + 1,
            self.line_column + error.column,
            self.line_offset + error.offset,
        )


class _LinesWalk(_Walk):
    """The walk over a JSON Lines text: each line a record or a server document."""

    def __init__(self, rules: Iterable[Rule], sink: Sink, *, strict: bool) -> None:
        super().__init__(iter(()), rules, sink, strict=strict)
        self.entries: dict[str, dict[str, Any]] = {}
        self.counted: set[str] = set()
        # A record's server_id -> its label and summary entry (for the servers
        # the summary lists).
        self.labels: dict[str, tuple[str, dict[str, Any]]] = {}

    def walk(self, lines: "_FastLines | _StrictLines") -> Outcome:
        """Walk every line and return the outcome."""
        try:
            self._lines(lines)
        except JSONSyntaxError as exc:
            if isinstance(lines, _StrictLines):
                raise lines.malformed(exc) from None
            raise
        self._flush()
        if self.record_count == 0:
            raise DocumentInvalid("no valid metrics record", "")
        self.depth = max(self.depth, 1)
        summary = self._summary(lines.reader.count)
        return Outcome(
            "server_metrics",
            summary | {"format": "ndjson"},
            self.record_count,
            self.issue_count,
            self.anomaly_count,
        )

    def _server(self, label: str) -> dict[str, Any]:
        """The summary entry of the server `label` (a scratch one past the limit)."""
        entry = self.entries.get(label)
        if entry is None:
            entry = {"id": None, "name": None, "location": None, "record_count": 0}
            if len(self.counted) < MAX_COUNTED_SERVERS and label not in self.counted:
                self.counted.add(label)
                self.server_count = len(self.counted)
                if len(self.servers) < MAX_SUMMARY_SERVERS:
                    self.entries[label] = entry
                    self.servers.append(entry)
        return entry

    def _label(self, server_id: str) -> tuple[str, dict[str, Any]]:
        """A record's server: its label and summary entry."""
        label = _clean(server_id)
        entry = self._server(label)
        if entry["id"] is None:
            entry["id"] = label
        if len(self.labels) < MAX_SUMMARY_SERVERS and label in self.entries:
            self.labels[server_id] = (label, entry)
        return label, entry

    def _lines(self, lines: "_FastLines | _StrictLines") -> None:
        """Walk each line's value: a record (the hot path) or a server document.

        One frame for every line, everything it touches per line a local. A
        record is checked as `_Walk._metrics` checks one, after its server_id.
        Members come in (map_key, value) event pairs; the pair that ends the
        object is (end_map, END_LINE): anything else there is not one value.
        """
        type_names = TYPE_NAMES
        get = _LINE_FIELDS.get
        slot_count = len(METRICS)
        checks = self.checks
        check_finite = self.check_finite
        labels = self.labels
        new = tuple.__new__
        infinity = math.inf
        for number, events in lines:
            nxt = events.__next__
            event, value = nxt()
            if event != "start_map":
                if event == RECORDS:
                    self._typed(number, value)
                else:
                    self._non_object(number, event, nxt)
                continue
            values: list[Any] = [None] * slot_count
            stamp_event = stamp_text = None
            suspect = False
            server_event = server_id = server_name = location = None
            metrics_type = None
            entry: dict[str, Any] | None = None
            valid = 0
            for (key_event, key), (event, value) in zip(events, events, strict=False):
                if key_event != "map_key":
                    break
                slot = get(key)
                if slot is not None and slot >= 0:
                    if event == "number":
                        values[slot] = value
                        continue
                    # A type name in place of the number: a later duplicate key
                    # may still replace it, so judge at the end.
                    suspect = True
                    values[slot] = type_names[event]
                elif slot == _TIMESTAMP:
                    stamp_event, stamp_text = event, value
                elif slot == _SERVER_ID:
                    server_event = event
                    server_id = value if event == "string" else None
                elif slot == _METRICS:
                    if event == "start_array":
                        if entry is None:
                            if isinstance(server_id, str):
                                label = _clean(server_id)
                            elif isinstance(server_name, str):
                                label = _clean(server_name)
                            else:
                                label = f"#{number}"
                            entry = self._server(label)
                        self.nxt, self.pairs = nxt, zip(events, events, strict=False)
                        valid += self._metrics(label, (number, "metrics"), 2)
                        continue
                    metrics_type = type_names[event]
                elif slot == _SERVER_NAME:
                    server_name = value if event == "string" else None
                elif slot == _LOCATION:
                    location = value if event == "string" else None
                if event == "start_map" or event == "start_array":
                    self.depth = max(self.depth, _skip(nxt, 2))
            else:
                key_event = None
            if key_event != "end_map" or event != "end_line":
                # Only yajl's events get here: the tokenizer stops at such a line.
                raise Unsafe
            if entry is not None:
                entry["record_count"] += valid
                self._describe(entry, server_id, server_name, location)
                continue
            index = self.index
            self.index = index + 1
            if metrics_type is not None:
                self._issue(
                    pointer(number, "metrics"),
                    f"metrics must be an array, got {metrics_type}",
                )
                continue
            if server_event != "string":
                message = (
                    "server_id is required"
                    if server_event is None
                    else f"server_id must be a string, got {type_names[server_event]}"
                )
                self._issue(pointer(number, "server_id"), message)
                continue
            if check_finite and (infinity in values or -infinity in values):
                suspect = True
            stamp = utc_timestamp(stamp_text) if stamp_event == "string" else None
            if stamp is None or suspect:
                problem = record_problem(
                    stamp_event, stamp_text, stamp, values, METRICS
                )
                if problem is not None:
                    field, message = problem
                    self._issue(pointer(number, field), message)
                    continue
            label, entry = labels.get(server_id) or self._label(server_id)
            entry["record_count"] += 1
            if (server_name is not None and entry["name"] is None) or (
                location is not None and entry["location"] is None
            ):
                self._describe(entry, server_id, server_name, location)
            for slot, metric, low, high in checks:
                amount = values[slot]
                if amount is not None and (amount < low or amount > high):
                    self.anomalies.append(
                        new(Anomaly, (index, stamp, label, metric, amount, low, high))
                    )
            records = self.records
            records.append(new(Record, (index, label, stamp, tuple(values))))
            self.record_count += 1
            if len(records) >= BATCH_SIZE:
                self._flush_records()

    def _typed(self, first: int, structs: list[TypedLine]) -> None:
        """Lines decoded as `TypedLine`s (from line `first` on), checked as above.

        Every field is of its type and no value is infinite (msgspec refuses
        numbers beyond a double), so only the timestamp can make one invalid.
        Consecutive records of one server are counted in its entry at once.
        """
        labels = self.labels
        new = tuple.__new__
        index = self.index
        kept: list[Record] = []
        keep = kept.append
        server_id = label = entry = None
        counted = 0
        for position, fields in enumerate(map(astuple, structs)):
            stamp = utc_timestamp(fields[0])
            if stamp is None:
                problem = record_problem(
                    "string", fields[0], None, list(fields[1:_SERVER]), METRICS
                )
                self._issue(pointer(first + position, problem[0]), problem[1])
                index += 1
                continue
            if fields[_SERVER] != server_id:
                if entry is not None:
                    entry["record_count"] += counted
                server_id, counted = fields[_SERVER], 0
                label, entry = labels.get(server_id) or self._label(server_id)
            counted += 1
            if fields[-2] is not UNSET or fields[-1] is not UNSET:
                name, location = (None if v is UNSET else v for v in fields[-2:])
                self._describe(entry, server_id, name, location)
            keep(new(Record, (index, label, stamp, fields[1:_SERVER])))
            index += 1
        if entry is not None:
            entry["record_count"] += counted
        self.index = index
        self.record_count += len(kept)
        self._keep(kept)

    def _non_object(self, number: int, event: str, nxt: Callable[[], Event]) -> None:
        """A line whose value is not an object: an invalid record."""
        self._issue(
            pointer(number), f"record must be an object, got {TYPE_NAMES[event]}"
        )
        if event == "start_array":
            self.depth = max(self.depth, _skip(nxt, 1))
        self.index += 1
        if nxt() != END_LINE:
            raise Unsafe

    @staticmethod
    def _describe(
        entry: dict[str, Any],
        server_id: str | None,
        server_name: str | None,
        location: str | None,
    ) -> None:
        """Fill in what the summary does not know yet about a server."""
        for field, text in (
            ("id", server_id),
            ("name", server_name),
            ("location", location),
        ):
            if entry[field] is None and isinstance(text, str):
                entry[field] = _clean(text)
