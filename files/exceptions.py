"""What the write path raises: its own errors, mapped to HTTP by the API."""

from django.conf import settings


class FileGone(Exception):
    """The file was deleted (or never was the caller's) while the request ran."""


class Superseded(Exception):
    """The run's generation is no longer the file's: replaced, reprocessed or
    deleted while it ran. Nothing it wrote is kept."""


class NotAtOnce(Exception):
    """A run in one transaction found the file too large for it (a second batch of
    records): it is rolled back and the file goes the two-transaction way."""


class Busy(Exception):
    """Another session held the file's processing lock for too long: try again.

    A superseded run stops at its next batch, so this is a duplicate delivery that
    is still running, or a killed worker whose session the database has not ended.
    """


class QuotaExceeded(Exception):
    """The request would take the owner past a per-user limit; nothing was stored.

    `limit` names which: "bytes" (stored bytes), "files" or "processing" (files
    queued or processing at once).
    """

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class UploadRefused(Exception):
    """The upload cannot be a JSON text (empty, only whitespace, not JSON); nothing
    was stored."""


class UploadTooLarge(Exception):
    """The upload is over DWELLFI_MAX_UPLOAD_BYTES; nothing was stored."""

    def __init__(self) -> None:
        limit = settings.DWELLFI_MAX_UPLOAD_BYTES
        super().__init__(f"Upload larger than the limit of {limit} bytes.")
