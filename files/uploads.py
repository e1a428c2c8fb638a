"""Upload handling that enforces DWELLFI_MAX_UPLOAD_BYTES, whatever the headers say."""

import os

from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import status
from rest_framework.exceptions import APIException

# Room for the multipart boundaries and the small form fields around the file.
MULTIPART_OVERHEAD = 64 * 1024


class UploadTooLarge(APIException):
    """The upload is over the configured limit."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"

    def __init__(self) -> None:
        limit = settings.DWELLFI_MAX_UPLOAD_BYTES
        super().__init__(f"Upload larger than the limit of {limit} bytes.")


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
    A body over the limit is refused with 413 before anything parses it. A body
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
            if size > settings.DWELLFI_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD:
                return JsonResponse(
                    {"detail": str(UploadTooLarge().detail)},
                    status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
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
