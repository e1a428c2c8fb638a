"""Reading a JSON document: one interface, a fast path and the strict authority.

`read_fast(stream, progress)` and `read_strict(stream, progress)` each return the
document's events, the same `(event, value)` pairs as
`ijson.basic_parse(stream, use_float=True)`, and a count of the bytes read so far.

* The fast path is ijson's C parser (yajl) behind a cheap prefilter for what yajl
  gets wrong: vertical tab and form feed taken for whitespace, number literals
  longer than `MAX_NUMBER_LENGTH`, lone surrogate escapes turned into "?", and
  quote-free stretches on which yajl spends quadratic time. A prefilter hit raises
  `Unsafe`; any other doubt surfaces as yajl's own error. Either way the caller
  reads the document again with the strict path.
* The strict path is `jsonstrict.basic_parse`: RFC 8259 exactly, and the authority
  on every malformed document (`JSONSyntaxError` with its line, column and byte
  offset).

* The records path is the strict tokenizer itself, with runs of metrics records
  taken whole by msgspec (`RecordWindows`): where the walker stands in a
  `metrics` array, the tokenizer hands the bytes ahead to msgspec, which decodes
  the complete records among them into typed structs, one ("records", structs)
  event. A run is taken only when nothing in it needs the tokenizer's judgement:
  plain ASCII, no escape, no number literal longer than `MAX_NUMBER_LENGTH`, no
  nested array or object, msgspec's decode and its types without complaint (a
  number that overflows a double is such a complaint). Anything else, and the
  tokenizer reads those bytes itself, so outcomes and errors are the strict
  path's. It keeps no line and column: a document it fails is read again by the
  strict path, which reports where.

* JSON Lines take a like path (`typed_lines`): a run of whole lines that are
  all plain records is decoded by msgspec at once; the lines it leaves are read
  one by one by yajl, and the strict tokenizer is the authority as for documents.

`read(stream, progress)` picks the path for a document: the records path when its
first chunk names a `metrics` member, the fast path otherwise.

All read through `Reader`, which counts the bytes and reports progress; an error
from the caller's stream or progress callback comes out as `CallerError`, so that a
fast pass's catch-all cannot take it for a parse failure.
"""

import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

import ijson
import msgspec
from msgspec import UNSET, UnsetType

from .jsonstrict import BOM, CHUNK_SIZE, MAX_NUMBER_LENGTH
from .jsonstrict import basic_parse as strict_parse

__all__ = [
    "CallerError",
    "LooseRecord",
    "Progress",
    "Reading",
    "RecordWindows",
    "TypedLine",
    "TypedRecord",
    "Unsafe",
    "read",
    "read_fast",
    "read_records",
    "read_strict",
]

Event = tuple[str, Any]


class Unsafe(Exception):
    """The fast pass cannot be trusted with this document."""


class CallerError(Exception):
    """An exception from the caller's stream, sink or progress callback.

    Wrapped so the fast pass's catch-all cannot mistake it for a parse failure;
    `process` re-raises the original.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


# Prefilter: byte classes for one bytes.translate(), much faster than a regex
# scan. Number-like bytes become "9" (to find over-long runs), vertical tab and
# form feed become "!" (yajl takes them for whitespace, JSON does not).
_PREFILTER_TABLE = bytes(
    0x39 if byte in b"-+0123456789.eE" else 0x21 if byte in b"\x0b\x0c" else 0x20
    for byte in range(256)
)
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


class Progress:
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
            raise CallerError(exc) from exc


class Reader:
    """The stream as both parsers read it: bytes counted, progress reported."""

    def __init__(self, stream: BinaryIO, progress: Progress) -> None:
        self.stream = stream
        self.progress = progress
        self.count = 0

    def _next_chunk(self, size: int) -> bytes:
        try:
            chunk = self.stream.read(size)
        except Exception as exc:
            raise CallerError(exc) from exc
        self.count += len(chunk)
        self.progress(self.count)
        return chunk

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        """Up to `size` bytes; b"" at the end."""
        if size == 0:
            # ijson probes with read(0) to tell binary from text streams.
            return b""
        return self._next_chunk(size if size > 0 else CHUNK_SIZE)


class FastReader(Reader):
    """Feeds yajl: skips a UTF-8 BOM and refuses what yajl would get wrong."""

    def __init__(self, stream: BinaryIO, progress: Progress) -> None:
        super().__init__(stream, progress)
        self.started = False
        self.ended = False
        self.tail = b""
        self.since_quote = 0

    def read(self, size: int = CHUNK_SIZE, *, check: bool = True) -> bytes:
        """Up to `size` bytes, checked; raises Unsafe on a prefilter hit.

        With `check=False` the caller calls `check` on what it gives yajl,
        which may be only some of what it read.
        """
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
                    return self.read(size, check=check)
        if check:
            self.check(chunk)
        if not chunk:
            # yajl ignores an unterminated string after the document ('{} "x'):
            # a final newline is whitespace after a valid document but an
            # error inside a string. It is not counted as read.
            self.ended = True
            return b"\n"
        return chunk

    def check(self, chunk: bytes) -> None:
        """Raise Unsafe if yajl would get `chunk` wrong, given after the last one.

        b"" is the end of the text, where a last escape is judged.
        """
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
                raise Unsafe
        # Overlap with the previous chunk so nothing spanning the seam is missed.
        data = tail + chunk
        # Escapes starting in the tail were judged with the previous chunk,
        # except the last few, which waited for what follows them.
        start = max(len(tail) - _ESCAPE_PAIR_LENGTH, 0)
        if _prefilter_hit(data, start, final=not chunk):
            raise Unsafe
        self.tail = data[-_OVERLAP:]


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


def read_fast(
    stream: BinaryIO, progress: "Progress"
) -> tuple[Iterator[Event], Callable[[], int]]:
    """The events of yajl behind the prefilter, and the bytes read so far."""
    reader = FastReader(stream, progress)
    events = ijson.basic_parse(reader, use_float=True, buf_size=CHUNK_SIZE)
    return events, lambda: reader.count


def read_strict(
    stream: BinaryIO, progress: "Progress"
) -> tuple[Iterator[Event], Callable[[], int]]:
    """The events of the strict tokenizer, and the bytes read so far."""
    reader = Reader(stream, progress)
    return strict_parse(reader), lambda: reader.count


class Reading(NamedTuple):
    """A document's events, the bytes read so far, and the record runs if any."""

    events: Iterator[Event]
    size_of: Callable[[], int]
    # Set by the walker to the depth of the metrics array it stands in.
    windows: "RecordWindows | None"


# The fields of a metrics record, as msgspec decodes them. A `TypedRecord` is what
# almost every record is: a timestamp string and every metric a number. A run that
# does not fit is decoded again as `LooseRecord`s, whose fields take any scalar or
# nothing (UNSET), so the walker can say what is wrong with a record; a nested
# array or object fits neither and leaves the run to the tokenizer.
Number = int | float
Scalar = int | float | str | bool | None


class TypedRecord(msgspec.Struct, gc=False):
    """A metrics record of the expected types, every metric present."""

    timestamp: str
    cpu_usage: Number
    memory_usage: Number
    disk_read: Number
    disk_write: Number
    network_in: Number
    network_out: Number
    response_time: Number


class LooseRecord(msgspec.Struct, gc=False):
    """A metrics record whose fields may hold any scalar."""

    timestamp: Scalar | UnsetType = UNSET
    cpu_usage: Scalar | UnsetType = UNSET
    memory_usage: Scalar | UnsetType = UNSET
    disk_read: Scalar | UnsetType = UNSET
    disk_write: Scalar | UnsetType = UNSET
    network_in: Scalar | UnsetType = UNSET
    network_out: Scalar | UnsetType = UNSET
    response_time: Scalar | UnsetType = UNSET


_TYPED = msgspec.json.Decoder(list[TypedRecord])
_LOOSE = msgspec.json.Decoder(list[LooseRecord])
# Byte classes of a run: "!" for what only the tokenizer may judge (a nested
# array, the end of the records' array, an escape, any non-ASCII byte), "9" for
# number-like bytes, to find over-long literals.
_WINDOW_TABLE = bytes(
    0x21
    if byte in b"[]\\" or byte >= 0x80
    else 0x39
    if byte in b"-+0123456789.eE"
    else 0x20
    for byte in range(256)
)


class RecordWindows:
    """Takes runs of whole metrics records for the strict tokenizer (msgspec).

    `take` is given the tokenizer's buffer at an object opening an item of the
    array at `depth`. It returns the records of the longest run of complete
    records before anything it must not judge, and the index after the run; or
    None, leaving the bytes to the tokenizer and trying again only past them.
    """

    def __init__(self) -> None:
        self.depth: int | None = None
        self.resume = 0

    def take(
        self, buf: bytearray, pos: int, end: int, base: int
    ) -> tuple[list[TypedRecord] | list[LooseRecord], int] | None:
        # Only what lies ahead: what was read before may be long.
        classes = buf[pos:end].translate(_WINDOW_TABLE)
        limit = end
        doubt = classes.find(b"!")
        if doubt >= 0:
            limit = pos + doubt
        long_number = classes.find(_LONG_NUMBER, 0, limit - pos)
        if long_number >= 0:
            limit = pos + long_number
        if limit < end:
            # The tokenizer reads the record holding it; runs start again after.
            self.resume = base + limit + 1
        last = buf.rfind(b"}", pos, limit)
        if last < 0:
            return None
        stop = last + 1
        data = b"[" + buf[pos:stop] + b"]"
        try:
            try:
                records: list[Any] = _TYPED.decode(data)
            except msgspec.ValidationError:
                records = _LOOSE.decode(data)
        except Exception:
            # Malformed, a nested object, a number beyond a double, the run cut
            # inside a string: the tokenizer reads these bytes.
            self.resume = max(self.resume, base + stop)
            return None
        # Every "{" must open one of the records: an object nested under a key
        # msgspec skipped would count in the document's depth.
        if buf.count(b"{", pos, stop) != len(records):
            self.resume = max(self.resume, base + stop)
            return None
        return records, stop


class TypedLine(TypedRecord, gc=False):
    """A JSON Lines record of the expected types: a `TypedRecord` and its server.

    Its fields as a tuple: the timestamp, the metrics, then these three.
    """

    server_id: str
    server_name: str | UnsetType = UNSET
    location: str | UnsetType = UNSET


# A run of lines is decoded as an array of one-item arrays, one a line.
_TYPED_LINES = msgspec.json.Decoder(list[tuple[TypedLine]])
# The newline stays: inside a string it is an error, as in the line itself.
_LINE_SEAM = b"],\n["
# Where msgspec says the trouble is: which line, or which byte of its input.
_AT_LINE = re.compile(r"at `\$\[(\d+)\]")
_AT_BYTE = re.compile(r"\(byte (\d+)\)")


def typed_lines(run: bytes) -> tuple[list[TypedLine], int]:
    """The records of `run`'s first lines, and where the first line in doubt starts.

    `run` is whole lines of JSON Lines without the last newline; the second
    value is `len(run) + 1` when every line is taken. A line is taken when
    msgspec may judge it: it holds one value, a `TypedLine`, and nothing the
    tokenizer must judge (as for `RecordWindows`), no `metrics` member (a
    server document, or a misshapen one) and no nested object.

    The lines are decoded as one array of one-item arrays, each newline made
    "],\\n[": no bracket is left in a run, so a blank line, a second value on
    a line or a value cut between two lines is an error at that line. Where
    msgspec names the line or byte it doubts, the lines before it are decoded
    again without it; a doubt it does not place leaves every line to the
    caller.
    """
    classes = run.translate(_WINDOW_TABLE)
    end = len(run)
    doubts = (classes.find(b"!"), classes.find(_LONG_NUMBER), run.find(b'"metrics"'))
    for doubt in doubts:
        if 0 <= doubt < end:
            end = run.rfind(b"\n", 0, doubt)
    while end > 0:
        head = run[:end]
        data = b"[[" + head.replace(b"\n", _LINE_SEAM) + b"]]"
        try:
            lines = _TYPED_LINES.decode(data)
        except msgspec.ValidationError as exc:
            at = _AT_LINE.search(str(exc))
            doubt = int(at[1]) if at else 0
        except msgspec.DecodeError as exc:
            at = _AT_BYTE.search(str(exc))
            doubt = data.count(_LINE_SEAM, 0, int(at[1])) if at else 0
        except Exception:
            # Nested too deep for msgspec (under a member it skips).
            break
        else:
            # Every "{" opens a line's object: one under a member msgspec
            # skipped would count in the document's depth.
            if head.count(b"{") != len(lines):
                break
            return [line for (line,) in lines], end + 1
        # The newline before the line in doubt, -1 for the first line.
        end = -1
        for _ in range(doubt):
            end = head.index(b"\n", end + 1)
    return [], 0


def read_records(stream: BinaryIO, progress: Progress) -> Reading:
    """The strict tokenizer's events, runs of metrics records taken by msgspec."""
    reader = Reader(stream, progress)
    windows = RecordWindows()
    return Reading(strict_parse(reader, windows), lambda: reader.count, windows)


# A document is read by the records path when its first chunk holds this.
_RECORDS_HINT = b'"metrics"'


def read(stream: BinaryIO, progress: Progress) -> Reading:
    """The first pass over a document: the records path or the fast path.

    Metrics documents name their `metrics` member in the first chunk; anything
    else goes to yajl, which is faster than the tokenizer on what msgspec does
    not take.
    """
    replay = _Replay(stream)
    if _RECORDS_HINT in replay.head:
        return read_records(replay, progress)
    events, size_of = read_fast(replay, progress)
    return Reading(events, size_of, None)


class _Replay:
    """A stream whose first chunk has been looked at, read again from the start."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        try:
            self.head = stream.read(CHUNK_SIZE)
        except Exception as exc:
            raise CallerError(exc) from exc
        self.pending = self.head

    def read(self, size: int = -1) -> bytes:
        if self.pending:
            if 0 <= size < len(self.pending):
                chunk, self.pending = self.pending[:size], self.pending[size:]
                return chunk
            chunk, self.pending = self.pending, b""
            return chunk
        return self.stream.read(size)
