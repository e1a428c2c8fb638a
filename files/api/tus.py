"""`/api/uploads/`: resumable uploads on the tus 1.0 protocol (tus.io).

Core, creation, termination, expiration and checksum (sha1, sha256, md5). Every
request body is one chunk of at most DWELLFI_UPLOAD_CHUNK_BYTES, so daphne, which
holds a request body whole in memory, holds no more than that at a time however
large the file. Authentication is the API's (a token, or the session with its CSRF
token); an upload is its owner's alone: anyone else is answered 404. Protocol
errors are 4xx with a JSON `detail`: 412 for another protocol version, 415 for a
chunk not sent as application/offset+octet-stream, 409 for a chunk at another
offset than the stored one (`Upload-Offset` says which), 413 for a chunk or an
upload over its limit, 460 for a checksum mismatch, 410 once expired.

Upload-Metadata `replaces` (a file's id) makes the upload that file's new content,
processed again, as `PUT /api/files/{id}/` does; the file must be the caller's
(404 otherwise), and once it is deleted so is, for its client, the upload.
"""

import base64
import binascii

from django.conf import settings
from django.urls import reverse
from django.utils.http import http_date
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import APIException
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import resumable, selectors
from ..models import File, Upload
from .throttles import UploadThrottle

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,expiration,checksum"
CHUNK_TYPE = "application/offset+octet-stream"
# Methods a client that can send only GET and POST may ask for (tus core).
OVERRIDABLE = {"PATCH", "DELETE"}
CHECKSUM_MISMATCH = 460
# DwellFi's own: the largest chunk a PATCH may carry (DWELLFI_UPLOAD_CHUNK_BYTES).
CHUNK_SIZE_HEADER = "DwellFi-Max-Chunk-Size"


def _problem(status: int, detail: str, **headers: str) -> Response:
    return Response({"detail": detail}, status=status, headers=headers)


def _integer_header(request: Request, name: str) -> int | None:
    """A non-negative integer header; None when absent, ValueError when not one."""
    value = request.headers.get(name)
    if value is None:
        return None
    if not value.isascii() or not value.strip().isdigit():
        raise ValueError(f"{name} must be a non-negative integer.")
    return int(value)


def parse_metadata(header: str) -> dict[str, str]:
    """`Upload-Metadata`: comma-separated `key base64value` pairs (value optional).

    ValueError for a malformed one; values that are not UTF-8 or hold a NUL (as
    nowhere else in a request, `dwellfi.middleware`) are refused too.
    """
    metadata: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in header.split(","))):
        key, _, encoded = pair.partition(" ")
        if not key or " " in encoded.strip() or key in metadata:
            raise ValueError(f"Malformed Upload-Metadata pair {pair[:40]!r}.")
        try:
            metadata[key] = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"Upload-Metadata {key!r} is not base64 UTF-8.") from exc
        if "\0" in metadata[key]:
            raise ValueError(f"Upload-Metadata {key!r} holds a NUL.")
    return metadata


class VersionMismatch(APIException):
    """A request of another tus version than 1.0.0 (or none)."""

    status_code = 412
    default_detail = f"Tus-Resumable: {TUS_VERSION} is required (the tus protocol)."
    default_code = "tus_version"


class TusPermission(IsAuthenticated):
    """Signed in, except for OPTIONS: what the server supports is no secret."""

    def has_permission(self, request: Request, view) -> bool:
        return request.method == "OPTIONS" or super().has_permission(request, view)


@extend_schema(exclude=True)  # tus is its own protocol: docs/uploads.md
class TusView(APIView):
    """What every tus endpoint shares: the version check, the headers, overrides."""

    permission_classes = [TusPermission]
    parser_classes: list = []  # a chunk is read raw, never parsed

    def initialize_request(self, request, *args, **kwargs) -> Request:
        override = request.headers.get("X-HTTP-Method-Override", "").upper()
        if request.method == "POST" and override in OVERRIDABLE:
            request.method = override
        return super().initialize_request(request, *args, **kwargs)

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        # OPTIONS (discovery) and GET (DwellFi's JSON view) are not tus requests.
        if request.method not in ("OPTIONS", "GET") and (
            request.headers.get("Tus-Resumable") != TUS_VERSION
        ):
            raise VersionMismatch

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Tus-Resumable"] = TUS_VERSION
        if response.status_code == VersionMismatch.status_code:
            response["Tus-Version"] = TUS_VERSION
        response["Cache-Control"] = "no-store"
        return response

    def options(self, request: Request, *args, **kwargs) -> Response:
        return Response(
            status=204,
            headers={
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": TUS_EXTENSIONS,
                "Tus-Max-Size": str(settings.DWELLFI_MAX_RESUMABLE_BYTES),
                "Tus-Checksum-Algorithm": ",".join(resumable.CHECKSUMS),
                # tus has no header for the largest chunk; clients chunk by this.
                CHUNK_SIZE_HEADER: str(settings.DWELLFI_UPLOAD_CHUNK_BYTES),
            },
        )


def _replaced_file(request: Request, value: str) -> File | None:
    """The caller's file that Upload-Metadata `replaces` names (its id), or None."""
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None
    return selectors.file_get(user=request.user, file_id=int(value))


def _expires(upload: Upload) -> dict[str, str]:
    return {"Upload-Expires": http_date(upload.expires.timestamp())}


class UploadListView(TusView):
    """POST /api/uploads/: create an upload (tus creation)."""

    def get_throttles(self):
        return [UploadThrottle()] if self.request.method == "POST" else []

    def post(self, request: Request) -> Response:
        try:
            length = _integer_header(request, "Upload-Length")
            metadata = parse_metadata(request.headers.get("Upload-Metadata", ""))
        except ValueError as exc:
            return _problem(400, str(exc))
        if length is None:
            return _problem(400, "Upload-Length is required (no deferred length).")
        if length == 0:
            return _problem(400, "The file is empty.")
        limit = settings.DWELLFI_MAX_RESUMABLE_BYTES
        if length > limit:
            return _problem(413, f"Upload larger than the limit of {limit} bytes.")
        replaces = None
        if "replaces" in metadata:
            replaces = _replaced_file(request, metadata["replaces"])
            if replaces is None:
                return _problem(404, "The file to replace was not found.")
        upload = resumable.upload_create(
            owner=request.user,
            length=length,
            filename=metadata.get("filename", ""),
            filetype=metadata.get("filetype", ""),
            replaces=replaces,
        )
        location = request.build_absolute_uri(
            reverse("upload-detail", args=[upload.pk])
        )
        return Response(status=201, headers={"Location": location, **_expires(upload)})


class UploadDetailView(TusView):
    """/api/uploads/{id}/: its offset (HEAD, GET), a chunk (PATCH), DELETE."""

    def _get(self, upload_id, **kwargs):
        """The caller's upload, or the response that says why not."""
        try:
            return resumable.upload_get(
                owner=self.request.user, upload_id=upload_id, **kwargs
            ), None
        except Upload.DoesNotExist:
            return None, _problem(404, "Not found.")
        except resumable.UploadGone:
            return None, _problem(410, "The upload expired; start it again.")

    def head(self, request: Request, pk) -> Response:
        upload, problem = self._get(pk)
        if problem:
            return Response(status=problem.status_code)  # no body to a HEAD
        headers = {
            "Upload-Offset": str(upload.offset),
            "Upload-Length": str(upload.length),
        }
        return Response(status=200, headers={**headers, **_expires(upload)})

    def get(self, request: Request, pk) -> Response:
        upload, problem = self._get(pk)
        return problem or Response(
            {
                "id": str(upload.pk),
                "offset": upload.offset,
                "length": upload.length,
                "expires": upload.expires,
                "file": upload.file_id,
            }
        )

    def patch(self, request: Request, pk) -> Response:
        if request.content_type.split(";")[0].strip() != CHUNK_TYPE:
            return _problem(415, f"A chunk is sent as Content-Type: {CHUNK_TYPE}.")
        try:
            offset = _integer_header(request, "Upload-Offset")
            checksum = request.headers.get("Upload-Checksum")
            checksum = checksum and resumable.Checksum.parse(checksum)
        except ValueError as exc:
            return _problem(400, str(exc))
        if offset is None:
            return _problem(400, "Upload-Offset is required.")
        declared = _integer_header(request, "Content-Length") or 0
        limit = settings.DWELLFI_UPLOAD_CHUNK_BYTES
        too_large = f"Chunk larger than the limit of {limit} bytes."
        if declared > limit:
            return _problem(413, too_large)
        try:
            upload = resumable.upload_append(
                owner=request.user,
                upload_id=pk,
                offset=offset,
                body=request._request,
                checksum=checksum,
            )
        except Upload.DoesNotExist:
            return _problem(404, "Not found.")
        except resumable.UploadGone:
            return _problem(410, "The upload expired; start it again.")
        except resumable.OffsetMismatch as exc:
            return _problem(
                409,
                f"Upload-Offset is {offset}, the upload's is {exc.offset}.",
                **{"Upload-Offset": str(exc.offset)},
            )
        except resumable.ChunkTooLarge:
            return _problem(413, too_large)
        except resumable.PastLength:
            return _problem(400, "The chunk goes past Upload-Length.")
        except resumable.ChecksumMismatch:
            return _problem(CHECKSUM_MISMATCH, "Checksum mismatch.")
        headers = {"Upload-Offset": str(upload.offset), **_expires(upload)}
        if upload.file_id is not None:
            headers["DwellFi-File-Id"] = str(upload.file_id)
        return Response(status=204, headers=headers)

    def delete(self, request: Request, pk) -> Response:
        try:
            resumable.upload_terminate(owner=request.user, upload_id=pk)
        except Upload.DoesNotExist:
            return _problem(404, "Not found.")
        return Response(status=204)
