"""What an uploaded file holds, and processing it: gzip or not, a document or lines.

`process(open_raw, name=..., ...)` is the entry point of the worker's engine:

* **gzip**, told by its magic bytes (1f 8b), whatever the name: decompressed
  while it streams (python-isal's `igzip.GzipFile`, which inflates about 3×
  faster than zlib, fed 8 KiB of the stored bytes and read 64 KiB at a time),
  never beyond `max_decompressed` bytes. A bomb, a corrupt or a truncated stream
  fails the file with `DecompressionFailed`. Positions of errors are in the decompressed
  text; progress is the share of the compressed bytes read.
* **JSON Lines** (`ndjson.process`) when the name says so (`.jsonl`, `.ndjson`,
  either with `.gz`), or when a document fails with data after its first value
  and that reads as JSON Lines: the first value an object alone on the first
  line, the lines up to the extra data well-formed, and at least one valid
  record among them all. Any other malformed document keeps the document's
  error, message and position.
* Otherwise one **JSON document** (`engine.process`).

Pure Python, no Django, like the engine.
"""

import gzip
import io
from collections.abc import Callable, Iterable
from contextlib import closing
from typing import BinaryIO

from isal import igzip, isal_zlib

from . import engine, ndjson
from .engine import (
    DocumentInvalid,
    DocumentMalformed,
    Outcome,
    ProcessingError,
    Rule,
    Sink,
)
from .jsonstrict import BOM, CHUNK_SIZE

__all__ = ["GZIP_MAGIC", "LINES_SUFFIXES", "DecompressionFailed", "process"]

GZIP_MAGIC = b"\x1f\x8b"
LINES_SUFFIXES = (".jsonl", ".ndjson")
# How much compressed input igzip is given at a time (see _Counted).
_COMPRESSED_READ = io.DEFAULT_BUFFER_SIZE
# jsonstrict's message for a second top-level value.
_EXTRA_DATA = "Extra data after the document"


class DecompressionFailed(ProcessingError):
    """The gzip stream is corrupt, truncated, or decompresses past the limit."""


def process(
    open_raw: Callable[[], BinaryIO],
    *,
    name: str,
    size: int,
    rules: Iterable[Rule],
    sink: Sink,
    max_decompressed: int,
    on_progress: Callable[[float], None] | None = None,
) -> Outcome:
    """Process the stored bytes `open_raw()` returns, as what they hold.

    `open_raw` returns a fresh binary stream of the stored bytes at each call;
    `name` is the file's display name, `size` its stored size. The contract is
    `engine.process`'s; gzip adds DecompressionFailed.
    """
    rules = tuple(rules)
    with closing(open_raw()) as raw:
        compressed = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    open_text, text_size, report = open_raw, size, on_progress
    if compressed:
        gunzip = _GunzipOpener(open_raw, max_decompressed)
        open_text = gunzip
        # The engine counts decompressed bytes against `size`; measured against
        # the limit they never reach 1.0 before the end, and the fraction sent
        # on is that of the compressed bytes read.
        text_size = max_decompressed + 1
        if on_progress is not None:
            report = gunzip.progress(size, on_progress)
    options = {"size": text_size, "rules": rules, "sink": sink, "on_progress": report}
    base = name.lower().removesuffix(".gz")
    if base.endswith(LINES_SUFFIXES):
        outcome = ndjson.process(open_text, **options)
    else:
        try:
            outcome = engine.process(open_text, **options)
        except DocumentMalformed as error:
            if not _may_be_lines(error, open_text):
                raise
            sink.reset()
            try:
                outcome = ndjson.process(open_text, **options)
            except DocumentMalformed as lines_error:
                if lines_error.line is not None and lines_error.line <= error.line:
                    # Not even the first lines read as JSON Lines.
                    raise error from None
                raise
            except DocumentInvalid:
                # Lines, but of no metrics record: not what the heuristic is for.
                raise error from None
    if compressed:
        return engine.Outcome(
            outcome.kind,
            outcome.summary | {"compression": "gzip"},
            outcome.record_count,
            outcome.invalid_record_count,
            outcome.anomaly_count,
        )
    return outcome


def _may_be_lines(error: DocumentMalformed, open_text: Callable[[], BinaryIO]) -> bool:
    """Whether a document that failed so could be JSON Lines: an object first,
    then more data on a later line."""
    if error.message != _EXTRA_DATA or error.line is None or error.line < 2:
        return False
    with closing(open_text()) as stream:
        head = stream.read(CHUNK_SIZE)
    return head.removeprefix(BOM).lstrip(b" \t\r\n")[:1] == b"{"


class _GunzipOpener:
    """Opens the stored bytes decompressed; remembers the last stream for progress."""

    def __init__(self, open_raw: Callable[[], BinaryIO], limit: int) -> None:
        self.open_raw = open_raw
        self.limit = limit
        self.current: _Gunzip | None = None

    def __call__(self) -> "_Gunzip":
        self.current = _Gunzip(self.open_raw(), self.limit)
        return self.current

    def progress(
        self, size: int, report: Callable[[float], None]
    ) -> Callable[[float], None]:
        """A progress callback reporting the share of the compressed bytes read."""

        def compressed_share(fraction: float) -> None:
            if fraction < 1.0 and self.current is not None and size > 0:
                fraction = min(self.current.compressed / size, 1.0)
            report(fraction)

        return compressed_share


class _Counted:
    """The stored bytes as GzipFile reads them, counted, 8 KiB at a time.

    igzip would fill its 512 KiB buffer at once through `readinto`; 8 KiB, as
    the standard library's GzipFile reads, keeps progress fine-grained even
    for a small, well-compressed file (8 KiB inflates to 64 KiB or more).
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        """Up to `size` compressed bytes, never more than 8 KiB."""
        size = _COMPRESSED_READ if size < 0 else min(size, _COMPRESSED_READ)
        data = self.raw.read(size)
        self.count += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:
        """Fill the start of `buffer` with up to 8 KiB of compressed bytes."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Gunzip:
    """A gzip stream read decompressed, within a limit, failing with a clear reason."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self.raw = _Counted(raw)
        self.limit = limit
        self.decompressed = 0
        self.file = igzip.GzipFile(fileobj=self.raw, mode="rb")

    @property
    def compressed(self) -> int:
        """Compressed bytes read so far."""
        return self.raw.count

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        """Up to `size` decompressed bytes (b"" at the end)."""
        try:
            data = self.file.read(size if size >= 0 else CHUNK_SIZE)
        except EOFError:
            raise DecompressionFailed(
                "The gzip stream is truncated: it ends before its end-of-stream marker"
            ) from None
        except (gzip.BadGzipFile, isal_zlib.error) as exc:
            raise DecompressionFailed(f"The gzip stream is corrupt: {exc}") from None
        self.decompressed += len(data)
        if self.decompressed > self.limit:
            raise DecompressionFailed(
                f"The file decompresses to more than the limit of {self.limit:,} bytes"
            )
        return data

    def close(self) -> None:
        """Close the decompressor and the stored bytes."""
        try:
            self.file.close()
        finally:
            self.raw.raw.close()
