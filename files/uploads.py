"""Upload handling that enforces DWELLFI_MAX_UPLOAD_BYTES while the body streams in."""

from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler
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
