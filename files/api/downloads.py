"""Downloads that never hold a file in the web process's memory.

Django's FileResponse is a synchronous iterator, which Django under ASGI reads
whole into a list before sending (20 parallel downloads of a 200 MB file: 4 GB in
daphne). Instead, by where the bytes are:

- behind nginx (DWELLFI_X_ACCEL_PREFIX set): the answer is only headers with
  `X-Accel-Redirect`; nginx sends the file from the shared volume itself;
- in S3: a redirect to a short-lived pre-signed URL, the object store sends it;
- otherwise: an asynchronous iterator of CHUNK_SIZE reads, each in a thread, so a
  download holds one chunk at a time (a synchronous one under WSGI, e.g. the test
  client).
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import IO
from urllib.parse import quote

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.utils.http import content_disposition_header

from ..models import File
from ..uploads import in_s3

CHUNK_SIZE = 64 * 1024
PRESIGNED_URL_SECONDS = 300
# Served as opaque bytes: a failed upload need not be JSON at all.
CONTENT_TYPE = "application/octet-stream"


def download_response(request: HttpRequest, file: File) -> HttpResponseBase:
    """The file's original bytes as an attachment, sent without holding them."""
    storage, name = file.content.storage, file.content.name
    disposition = content_disposition_header(True, file.name)
    if in_s3(storage):
        return HttpResponseRedirect(
            storage.url(
                name,
                parameters={
                    "ResponseContentDisposition": disposition,
                    "ResponseContentType": CONTENT_TYPE,
                },
                expire=PRESIGNED_URL_SECONDS,
            )
        )
    if settings.DWELLFI_X_ACCEL_PREFIX:
        response = HttpResponse(content_type=CONTENT_TYPE)
        response["Content-Disposition"] = disposition
        # nginx serves the file under this internal URI, with its Content-Length.
        response["X-Accel-Redirect"] = settings.DWELLFI_X_ACCEL_PREFIX + quote(name)
        return response
    handle = storage.open(name, "rb")
    chunks = _read_async(handle) if isinstance(request, ASGIRequest) else _read(handle)
    response = StreamingHttpResponse(chunks, content_type=CONTENT_TYPE)
    response["Content-Disposition"] = disposition
    response["Content-Length"] = str(storage.size(name))
    return response


def _read(handle: IO[bytes]) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK_SIZE):
            yield chunk


async def _read_async(handle: IO[bytes]) -> AsyncIterator[bytes]:
    # Each read in a thread of its own pool (asyncio.to_thread), not on the event
    # loop, and not in the one thread Django's sync_to_async shares by default.
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_SIZE):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
