"""Uploads: receiving them within DWELLFI_MAX_UPLOAD_BYTES whatever the headers
say, checking what arrived, naming and storing it."""

import hashlib
import os
import unicodedata
import zlib
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.files.storage import Storage
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse

from .exceptions import UploadRefused, UploadTooLarge
from .inputs import GZIP_MAGIC
from .models import File

# Room for the multipart boundaries and the small form fields around the file.
MULTIPART_OVERHEAD = 64 * 1024
# Resumable (tus) uploads: each body is a chunk (`files.api.tus`).
RESUMABLE_PREFIX = "/api/uploads/"
# How much of an upload is looked at, decompressed when it is gzip.
SNIFF_BYTES = 4096
GZIP_WBITS = 16 + zlib.MAX_WBITS
# What a JSON text can start with, after optional whitespace and a UTF-8 BOM.
JSON_START = frozenset(b'{["-0123456789tfn')
# Bidirectional formatting characters: "invoice\u202efdp.json" would show as
# "invoicenosj.pdf".
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e")
BIDI_CONTROLS |= frozenset("\u2066\u2067\u2068\u2069")


def in_s3(storage: Storage) -> bool:
    """Whether the bytes live in S3 (django-storages), not on a disk of ours."""
    from storages.backends.s3 import S3Storage

    return isinstance(storage, S3Storage)


def upload_check(upload: UploadedFile) -> None:
    """Refuse what cannot be a JSON text (a document or JSON Lines, gzip-compressed
    or not) from its first bytes (nothing is stored)."""
    upload.seek(0)
    head = upload.read(SNIFF_BYTES)
    upload.seek(0)
    whole = len(head) < SNIFF_BYTES
    if head.startswith(GZIP_MAGIC):
        head, whole = _gunzip_head(head)
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if not head and whole:
        raise UploadRefused("The submitted file is empty.")
    if not text and whole:
        raise UploadRefused("The submitted file holds only whitespace.")
    if text and text[0] not in JSON_START:
        raise UploadRefused("The submitted file is not JSON.")


def _gunzip_head(head: bytes) -> tuple[bytes, bool]:
    """The first decompressed bytes of a gzip file's first bytes, and whether they
    are all it holds (the worker decompresses the whole file, within its limit)."""
    decompressor = zlib.decompressobj(wbits=GZIP_WBITS)
    try:
        text = decompressor.decompress(head, SNIFF_BYTES)
    except zlib.error:
        raise UploadRefused("The submitted file is not valid gzip.") from None
    return text, decompressor.eof and len(text) < SNIFF_BYTES


def upload_store(upload: UploadedFile, stored: str | None = None) -> dict[str, Any]:
    """Save the bytes under a generated name (unless already `stored` under that
    one), hashing them on the way; the fields that describe them."""
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    if stored is None:
        holder = File()
        holder.content.save("upload.json", upload, save=False)
        stored = holder.content.name
    return {"content": stored, "size": upload.size, "sha256": digest.hexdigest()}


def upload_unstore(name: str) -> None:
    """Remove stored bytes that no committed row refers to."""
    File._meta.get_field("content").storage.delete(name)


def display_name(name: str) -> str:
    """The client's filename as a display string: no path, no control or bidi
    characters (they could break a header or disguise the name), bounded length."""
    visible = "".join(
        c for c in name if c not in BIDI_CONTROLS and unicodedata.category(c) != "Cc"
    )
    cleaned = visible.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (cleaned if cleaned not in ("", ".", "..") else "upload.json")[:255]


class LimitedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Spools uploads to a temporary file and stops as soon as the limit is passed.

    The declared Content-Length is checked first; the bytes actually received are
    counted too, since a client can omit or understate it.
    """

    def handle_raw_input(
        self, input_data, META, content_length, boundary, encoding=None
    ):
        if content_length > settings.DWELLFI_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD:
            raise UploadTooLarge()
        self.received = 0
        return super().handle_raw_input(
            input_data, META, content_length, boundary, encoding
        )

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > settings.DWELLFI_MAX_UPLOAD_BYTES:
            self.file.close()
            raise UploadTooLarge()
        return super().receive_data_chunk(raw_data, start)


class RequestBodyMiddleware:
    """Sizes a request body by what was received, not by its Content-Length.

    Under ASGI the whole body has arrived (spooled by Django) before any view runs.
    A body over the limit is refused with 413 before anything parses it: on
    /api/uploads/ the limit is a chunk's (DWELLFI_UPLOAD_CHUNK_BYTES). A body
    sent without Content-Length (chunked) gets its real length: Django's multipart
    parser reads nothing without one, so such an upload would otherwise look empty.
    (daphne itself holds a body in memory whatever its size: put a limit in the
    proxy in front of it too, e.g. nginx's client_max_body_size.)
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        size = _received_size(request)
        if size is not None:
            if request.path.startswith(RESUMABLE_PREFIX):
                # A resumable upload's body is one chunk, however large the file.
                limit = settings.DWELLFI_UPLOAD_CHUNK_BYTES
                detail = f"Chunk larger than the limit of {limit} bytes."
            else:
                limit = settings.DWELLFI_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD
                detail = str(UploadTooLarge())
            if size > limit:
                return JsonResponse(
                    {"detail": detail}, status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE
                )
            if size and not request.META.get("CONTENT_LENGTH"):
                request.META["CONTENT_LENGTH"] = str(size)
        return self.get_response(request)


def _received_size(request: HttpRequest) -> int | None:
    """The size of the body the server handed over; None when it cannot be known."""
    if not isinstance(request, ASGIRequest):
        return None  # WSGI: the stream is the socket, bounded by Content-Length
    stream = request._stream  # Django's spooled copy of the whole body
    position = stream.tell()
    size = stream.seek(0, os.SEEK_END)
    stream.seek(position)
    return size
