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

Both read through `Reader`, which counts the bytes and reports progress; an error
from the caller's stream or progress callback comes out as `CallerError`, so that a
fast pass's catch-all cannot take it for a parse failure.
"""

import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import ijson

from .jsonstrict import BOM, CHUNK_SIZE, MAX_NUMBER_LENGTH
from .jsonstrict import basic_parse as strict_parse

__all__ = ["CallerError", "Progress", "Unsafe", "read_fast", "read_strict"]

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

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        """Up to `size` bytes, checked; raises Unsafe on a prefilter hit."""
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
                raise Unsafe
        # Overlap with the previous chunk so nothing spanning the seam is missed.
        data = tail + chunk
        # Escapes starting in the tail were judged with the previous chunk,
        # except the last few, which waited for what follows them.
        start = max(len(tail) - _ESCAPE_PAIR_LENGTH, 0)
        if _prefilter_hit(data, start, final=not chunk):
            raise Unsafe
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
