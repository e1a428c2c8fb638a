"""A strict, streaming RFC 8259 JSON tokenizer that pinpoints the first error.

`basic_parse(stream)` yields the same events as
`ijson.basic_parse(stream, use_float=True)`, reading 64 KiB chunks so memory
stays bounded by the largest single token, not by the document. It accepts
exactly RFC 8259 JSON in UTF-8 (a leading UTF-8 BOM is skipped) and raises
`JSONSyntaxError` with a human message, a 1-based line and column (in
characters) and a 0-based byte offset at the first problem. Beyond the RFC it
refuses, as malformed, lone surrogate escapes, nesting deeper than `MAX_DEPTH`
and number literals longer than `MAX_NUMBER_LENGTH` characters. Numbers that
overflow a double (``1e400``) are valid syntax and come out as ``inf``.

It is pure Python with an explicit stack, so no input can make it recurse,
exhaust memory through nesting, or raise anything but `JSONSyntaxError`
(exceptions from the stream itself pass through).
"""

import re
from collections.abc import Iterator
from json.decoder import scanstring
from typing import Any, Protocol

CHUNK_SIZE = 64 * 1024
MAX_DEPTH = 512
MAX_NUMBER_LENGTH = 100
BOM = b"\xef\xbb\xbf"

Event = tuple[str, Any]

# Every token but a string fits in this many bytes (a too-long number is
# recognised after MAX_NUMBER_LENGTH + 1), so keeping this much ahead of the
# current position lets numbers and literals be matched without re-reading.
_LOOKAHEAD = 128

_WHITESPACE = re.compile(rb"[ \t\n\r]*")
# Possessive quantifiers: a failed match must not backtrack through a long string.
_PLAIN_STRING = re.compile(rb'"[^"\\\x00-\x1f]*+"')
_STRING_BODY = re.compile(rb'(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+')
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)((?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)")
_NUMBER_RUN = re.compile(rb"[-+0-9.eE]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))

_START_MAP = ("start_map", None)
_END_MAP = ("end_map", None)
_START_ARRAY = ("start_array", None)
_END_ARRAY = ("end_array", None)
_TRUE = ("boolean", True)
_FALSE = ("boolean", False)
_NULL = ("null", None)
_LITERALS = {
    0x74: (b"true", _TRUE),
    0x66: (b"false", _FALSE),
    0x6E: (b"null", _NULL),
}

# Parser states: what the next token may be.
_VALUE = 0  # a value (top level, after ':' or after ',' in an array)
_FIRST_ITEM = 1  # a value or ']' (right after '[')
_KEY = 2  # a key (after ',' in an object)
_FIRST_KEY = 3  # a key or '}' (right after '{')
_COLON = 4
_NEXT = 5  # ',' or the container's closing bracket
_DONE = 6  # only whitespace until the end


class SupportsRead(Protocol):
    """A binary stream: `read(n)` returns up to n bytes, b"" at the end."""

    def read(self, size: int, /) -> bytes:
        """Return up to `size` bytes; b"" means the end of the stream."""
        ...


class JSONSyntaxError(Exception):
    """The document is not strict JSON; the position is of the first problem."""

    def __init__(self, message: str, line: int, column: int, offset: int) -> None:
        super().__init__(message, line, column, offset)
        self.message = message
        self.line = line
        self.column = column
        self.offset = offset

    def __str__(self) -> str:
        return (
            f"{self.message} (line {self.line}, column {self.column}, "
            f"byte offset {self.offset})"
        )


class _Fail(Exception):
    """Internal: a problem at an absolute byte offset, before line/column are known."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def _char_count(data: bytearray) -> int:
    """Code points in valid UTF-8: every byte that is not a continuation byte."""
    return len(data.translate(None, _CONTINUATION_BYTES))


def _char_at(buf: bytearray, index: int) -> str | None:
    """The character encoded at `index`, or None where the UTF-8 is invalid."""
    for width in range(1, 5):
        try:
            return buf[index : index + width].decode()
        except UnicodeDecodeError:
            continue
    return None


def _unexpected(
    buf: bytearray, index: int, base: int, message: str | None = None
) -> _Fail:
    """A failure for the byte at `index`; bad UTF-8 is named as such first."""
    char = _char_at(buf, index)
    if char is None:
        return _bad_utf8(buf, index, base)
    return _Fail(message or f"Unexpected character {char!r}", base + index)


def _bad_utf8(buf: bytearray, index: int, base: int) -> _Fail:
    """A failure for the invalid UTF-8 byte at `index`."""
    return _Fail(f"Invalid UTF-8 byte 0x{buf[index]:02x}", base + index)


def _decode(buf: bytearray, start: int, stop: int, base: int) -> str:
    """buf[start:stop] as text; invalid UTF-8 fails at its first bad byte."""
    try:
        return buf[start:stop].decode()
    except UnicodeDecodeError as exc:
        raise _bad_utf8(buf, start + exc.start, base) from None


def _string_failure(buf: bytearray, start: int, stop: int, base: int) -> _Fail:
    """Why the string opened at `start` is not valid, its body valid up to `stop`."""
    _decode(buf, start + 1, stop, base)
    if stop == len(buf):
        return _Fail("Unterminated string", base + start)
    byte = buf[stop]
    if byte != 0x5C:
        return _Fail(f"Unescaped control character U+{byte:04X} in string", base + stop)
    if stop + 1 == len(buf):
        return _Fail("Unterminated string", base + start)
    if buf[stop + 1] == 0x75:
        return _Fail(
            "Invalid \\u escape in string (expected 4 hex digits)", base + stop
        )
    char = _char_at(buf, stop + 1)
    if char is None:
        return _unexpected(buf, stop + 1, base)
    if char.isprintable():
        message = f"Invalid escape sequence '\\{char}' in string"
    else:
        message = f"Invalid escape sequence: backslash followed by {char!r}"
    return _Fail(message, base + stop)


def _lone_surrogate(buf: bytearray, start: int, stop: int, base: int) -> _Fail:
    """Locate the unpaired surrogate escape within the string buf[start:stop]."""
    pending: re.Match[bytes] | None = None
    for match in _ESCAPE.finditer(buf, start, stop):
        if pending is not None and pending.end() != match.start():
            break
        digits = match.group(1)
        code = int(digits, 16) if digits else 0
        if pending is not None:
            if 0xDC00 <= code < 0xE000:
                pending = None
                continue
            break
        if 0xD800 <= code < 0xDC00:
            pending = match
        elif 0xDC00 <= code < 0xE000:
            pending = match
            break
    # The decoded string holds a surrogate, so an unpaired escape exists.
    assert pending is not None
    escape = pending.group(0).decode()
    return _Fail(f"Lone surrogate {escape} in string", base + pending.start())


class Windows(Protocol):
    """Takes runs of whole records at once, where the caller asks for them.

    `depth` is the nesting depth of the array whose items may be taken (None:
    nowhere); `resume` the byte offset before which no run is tried again.
    """

    depth: int | None
    resume: int

    def take(
        self, buf: bytearray, pos: int, end: int, base: int
    ) -> tuple[Any, int] | None:
        """Items starting at buf[pos] and the index after the last, or None."""
        ...


# A run of records is tried with at least this much of the document at hand.
_WINDOW_MIN = CHUNK_SIZE // 2


def basic_parse(
    stream: SupportsRead, windows: Windows | None = None
) -> Iterator[Event]:
    """Yield ijson-style events for the JSON document in `stream`.

    Raises JSONSyntaxError at the first problem; the events before it have
    already been yielded. With `windows`, an object opening an item of the
    array at `windows.depth` may be read together with the items after it by
    `windows.take`, which comes out as one ("records", items) event; whatever
    it declines is tokenized here as usual, so the outcome is the same. Lines
    and columns are not kept up with `windows` (counting them was 3 % of a
    large file's parse): an error's offset is exact, its line and column are
    not. The records path is a first pass; the strict one reports its errors.
    """
    read = stream.read
    # A bytearray: a token spanning many chunks grows in place instead of
    # being copied again with every chunk.
    buf = bytearray()
    eof = False
    while len(buf) < len(BOM) and not eof:
        chunk = read(CHUNK_SIZE)
        buf += chunk
        eof = not chunk
    # Absolute offset of buf[0]; the line number; where the current line's
    # column counting resumes, and the characters counted before that point
    # (so a long line never has to stay in memory).
    base = 0
    line = 1
    col_from = 0
    col_carry = 0
    pos = 0
    if buf.startswith(BOM):
        pos = col_from = len(BOM)
    end = len(buf)
    stack: list[bool] = []  # True for an object, False for an array
    state = _VALUE
    need_more = False
    resume = -1  # absolute offset where a long string's scan continues
    try:
        # A NUL among the first two bytes is how UTF-16 and UTF-32 JSON starts.
        if buf[:2] in (b"\xff\xfe", b"\xfe\xff") or 0 in buf[:2]:
            raise _Fail("Document is UTF-16 or UTF-32 encoded; JSON must be UTF-8", 0)
        while True:
            # Most tokens follow another directly: skip the regex call then.
            if pos < end and buf[pos] <= 0x20:
                stop = _WHITESPACE.match(buf, pos).end()
                newlines = buf.count(b"\n", pos, stop)
                if newlines:
                    line += newlines
                    col_from = base + buf.rindex(b"\n", pos, stop) + 1
                    col_carry = 0
                pos = stop
            if (need_more or end - pos < _LOOKAHEAD) and not eof:
                need_more = False
                chunk = read(CHUNK_SIZE)
                if not chunk:
                    eof = True
                    continue
                cut = base + pos
                if col_from < cut and windows is None:
                    col_carry += _char_count(buf[col_from - base : pos])
                    col_from = cut
                del buf[:pos]
                buf += chunk
                base = cut
                pos = 0
                end = len(buf)
                continue
            if pos == end:
                if state == _DONE:
                    return
                if not stack:
                    raise _Fail("Empty document", base + pos)
                raise _Fail("Unexpected end of document", base + pos)
            byte = buf[pos]

            if state == _NEXT:
                in_object = stack[-1]
                if byte == 0x2C:
                    state = _KEY if in_object else _VALUE
                    pos += 1
                elif byte == 0x7D and in_object:
                    stack.pop()
                    pos += 1
                    state = _NEXT if stack else _DONE
                    yield _END_MAP
                elif byte == 0x5D and not in_object:
                    stack.pop()
                    pos += 1
                    state = _NEXT if stack else _DONE
                    yield _END_ARRAY
                elif in_object:
                    raise _unexpected(
                        buf, pos, base, "Expecting ',' or '}' after an object member"
                    )
                else:
                    raise _unexpected(
                        buf, pos, base, "Expecting ',' or ']' after an array element"
                    )
                continue

            if state == _COLON:
                if byte != 0x3A:
                    raise _unexpected(
                        buf, pos, base, "Expecting ':' after an object key"
                    )
                pos += 1
                state = _VALUE
                continue

            if state == _DONE:
                raise _unexpected(buf, pos, base, "Extra data after the document")

            if byte == 0x22:
                # A string resumed after a refill is past its plain prefix.
                match = _PLAIN_STRING.match(buf, pos) if resume < 0 else None
                if match is not None:
                    stop = match.end()
                    text = _decode(buf, pos + 1, stop - 1, base)
                else:
                    scan = resume - base if resume >= 0 else pos + 1
                    stop = _STRING_BODY.match(buf, scan).end()
                    if stop < end and buf[stop] == 0x22:
                        resume = -1
                        stop += 1
                        text = scanstring(_decode(buf, pos, stop, base), 1, True)[0]
                        if _SURROGATE.search(text) is not None:
                            raise _lone_surrogate(buf, pos + 1, stop - 1, base)
                    elif not eof and (
                        stop == end or (buf[stop] == 0x5C and end - stop < 6)
                    ):
                        resume = base + stop
                        need_more = True
                        continue
                    else:
                        raise _string_failure(buf, pos, stop, base)
                pos = stop
                if state >= _KEY:
                    # The colon usually follows at once: take it here.
                    if pos < end and buf[pos] == 0x3A:
                        pos += 1
                        state = _VALUE
                    else:
                        state = _COLON
                    yield ("map_key", text)
                else:
                    state = _NEXT if stack else _DONE
                    yield ("string", text)
                continue

            if state >= _KEY:
                if byte == 0x7D and state == _FIRST_KEY:
                    stack.pop()
                    pos += 1
                    state = _NEXT if stack else _DONE
                    yield _END_MAP
                elif byte == 0x7D:
                    raise _Fail("Trailing comma before '}'", base + pos)
                elif state == _FIRST_KEY:
                    raise _unexpected(buf, pos, base, "Expecting a string key or '}'")
                else:
                    raise _unexpected(buf, pos, base, "Expecting a string key")
                continue

            if (
                byte == 0x7B
                and windows is not None
                and len(stack) == windows.depth
                and not stack[-1]
                and base + pos >= windows.resume
            ):
                if end - pos < _WINDOW_MIN and not eof:
                    need_more = True
                    continue
                taken = windows.take(buf, pos, end, base)
                if taken is not None:
                    items, stop = taken
                    pos = stop
                    state = _NEXT
                    yield ("records", items)
                    continue

            if byte == 0x7B or byte == 0x5B:
                if len(stack) >= MAX_DEPTH:
                    raise _Fail(f"Nesting deeper than {MAX_DEPTH} levels", base + pos)
                pos += 1
                if byte == 0x7B:
                    stack.append(True)
                    state = _FIRST_KEY
                    yield _START_MAP
                else:
                    stack.append(False)
                    state = _FIRST_ITEM
                    yield _START_ARRAY
                continue

            if byte == 0x2D or 0x30 <= byte <= 0x39:
                stop = _NUMBER_RUN.match(buf, pos).end()
                if stop - pos > MAX_NUMBER_LENGTH:
                    raise _Fail(
                        f"Number literal longer than {MAX_NUMBER_LENGTH} characters",
                        base + pos,
                    )
                match = _NUMBER.match(buf, pos)
                valid_to = match.end() if match is not None else pos
                if valid_to != stop:
                    literal = buf[pos:stop].decode()
                    raise _Fail(f"Invalid number literal {literal!r}", base + valid_to)
                literal_bytes = buf[pos:stop]
                pos = stop
                state = _NEXT if stack else _DONE
                if match.group(1):
                    yield ("number", float(literal_bytes))
                else:
                    yield ("number", int(literal_bytes))
                continue

            literal = _LITERALS.get(byte)
            if literal is not None:
                word, event = literal
                if not buf.startswith(word, pos):
                    size = 1
                    while buf[pos + size : pos + size + 1] == word[size : size + 1]:
                        size += 1
                    if pos + size == end:
                        raise _Fail("Unexpected end of document", base + end)
                    raise _unexpected(
                        buf,
                        pos + size,
                        base,
                        f"Invalid literal (expected {word.decode()!r})",
                    )
                pos += len(word)
                state = _NEXT if stack else _DONE
                yield event
                continue

            if byte == 0x5D and state == _FIRST_ITEM:
                stack.pop()
                pos += 1
                state = _NEXT if stack else _DONE
                yield _END_ARRAY
            elif byte == 0x5D and stack and not stack[-1]:
                raise _Fail("Trailing comma before ']'", base + pos)
            else:
                raise _unexpected(buf, pos, base)
    except _Fail as failure:
        offset = failure.offset
        column = col_carry + _char_count(buf[col_from - base : offset - base]) + 1
        raise JSONSyntaxError(failure.message, line, column, offset) from None
