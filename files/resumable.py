"""Resumable uploads: bytes that arrive chunk by chunk and end as a File.

The protocol (tus 1.0) is spoken by `files.api.tus`; this is what it does to the
rows and the stored bytes:

* Creating an upload stores an empty object under a generated name in the
  uploads folder, the one the file will keep: nothing is copied at the end.
* A chunk is appended under the upload's row lock, at the offset the client
  names, which must be the one stored (tus answers 409 otherwise). It is written
  from the spooled request body in 1 MiB pieces, never whole in memory, and made
  durable (fsync) before the offset that covers it is committed. A chunk whose
  commit fails is written again by the retry, over the same bytes: the file is
  truncated to the stored offset first.
* The last chunk creates the File through `services.file_create`, in the same
  transaction as the offset: the checks, the quotas, the hash and the queueing
  are a plain upload's, and a file is created exactly once. The hash reads the
  stored bytes back (about 2 s a GB here: hashlib's state cannot be kept between
  requests, which may reach different processes). A refused file (not JSON, over
  a quota) ends its upload: the row and the bytes go.
* An unfinished upload idle past DWELLFI_UPLOAD_EXPIRY_SECONDS is deleted with
  its bytes by the periodic `uploads_expire`; a finished one's row goes then too
  (its bytes are the file's).

The bytes are appended to a local file (FileSystemStorage): the storage API has
no append, and S3 would need multipart parts of at least 5 MiB (not done).
"""

import base64
import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import BinaryIO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import services
from .exceptions import QuotaExceeded, UploadRefused
from .models import File, Upload, upload_path
from .quotas import quota_check

logger = logging.getLogger(__name__)

# Pieces of the request body copied to storage at a time.
COPY_PIECE = 1024 * 1024
# Upload-Checksum algorithms (tus checksum extension: sha1 is required).
CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}


class UploadGone(Exception):
    """The upload expired (410); its bytes are deleted or about to be."""


class OffsetMismatch(Exception):
    """The chunk's Upload-Offset is not the stored offset (409)."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class ChunkTooLarge(Exception):
    """The chunk is over DWELLFI_UPLOAD_CHUNK_BYTES (413)."""


class PastLength(Exception):
    """The chunk would take the upload past its Upload-Length (400)."""


class ChecksumMismatch(Exception):
    """The chunk's bytes do not match its Upload-Checksum (460)."""


@dataclass(frozen=True)
class Checksum:
    """A chunk's declared checksum: the algorithm's name and the digest."""

    algorithm: str
    digest: bytes

    @classmethod
    def parse(cls, header: str) -> "Checksum":
        """From `Upload-Checksum: <algorithm> <base64 digest>`; ValueError if bad."""
        algorithm, _, encoded = header.strip().partition(" ")
        if algorithm not in CHECKSUMS:
            raise ValueError(f"Unsupported checksum algorithm {algorithm!r}.")
        return cls(algorithm, base64.b64decode(encoded.strip(), validate=True))


def _storage():
    return File._meta.get_field("content").storage


def _expiry():
    return timezone.now() + timedelta(seconds=settings.DWELLFI_UPLOAD_EXPIRY_SECONDS)


def upload_create(
    *, owner: AbstractBaseUser, length: int, filename: str, filetype: str = ""
) -> Upload:
    """Start an upload of `length` bytes; its bytes are stored as they come.

    Raises QuotaExceeded when the owner has no room for the file, counting the
    bytes its unfinished uploads will add.
    """
    pending = Upload.objects.filter(owner=owner, file__isnull=True).aggregate(
        bytes=Coalesce(Sum("length"), 0)
    )["bytes"]
    quota_check(owner_id=owner.pk, files=1, size=length + pending, processing=1)
    content = _storage().save(upload_path(None, filename), ContentFile(b""))
    try:
        return Upload.objects.create(
            owner=owner,
            filename=filename[:255],  # cleaned for display by the file service
            filetype=filetype[:100],
            length=length,
            content=content,
            expires=_expiry(),
        )
    except BaseException:
        _storage().delete(content)
        raise


def upload_get(*, owner: AbstractBaseUser, upload_id, lock: bool = False) -> Upload:
    """The owner's upload; Upload.DoesNotExist for anyone else's, UploadGone once
    it expired."""
    rows = Upload.objects.filter(pk=upload_id, owner=owner)
    upload = (rows.select_for_update() if lock else rows).get()
    if upload.expires <= timezone.now():
        raise UploadGone
    return upload


def upload_append(
    *,
    owner: AbstractBaseUser,
    upload_id,
    offset: int,
    body: BinaryIO,
    checksum: Checksum | None = None,
) -> Upload:
    """Append the chunk `body` at `offset`; on the last byte, create the file.

    Raises OffsetMismatch, ChunkTooLarge, PastLength or ChecksumMismatch, storing
    nothing; the file service's refusals (UploadRefused, QuotaExceeded) end the
    upload.
    """
    try:
        with transaction.atomic():
            upload = upload_get(owner=owner, upload_id=upload_id, lock=True)
            if offset != upload.offset:
                raise OffsetMismatch(upload.offset)
            upload.offset += _write_chunk(upload, body, checksum)
            upload.expires = _expiry()
            if upload.is_complete:
                upload.file = _file_from(upload)
            upload.save(update_fields=["offset", "expires", "file"])
    except (UploadRefused, QuotaExceeded):
        upload_terminate(owner=owner, upload_id=upload_id)
        raise
    return upload


def _write_chunk(upload: Upload, body: BinaryIO, checksum: Checksum | None) -> int:
    """Write the chunk at the upload's offset, durably; how many bytes it was."""
    room = upload.length - upload.offset
    limit = settings.DWELLFI_UPLOAD_CHUNK_BYTES
    digest = CHECKSUMS[checksum.algorithm]() if checksum else None
    written = 0
    with open(_storage().path(upload.content), "r+b") as out:
        out.seek(upload.offset)
        out.truncate()
        try:
            while piece := body.read(COPY_PIECE):
                written += len(piece)
                if written > limit:
                    raise ChunkTooLarge
                if written > room:
                    raise PastLength
                if digest is not None:
                    digest.update(piece)
                out.write(piece)
            if digest is not None and digest.digest() != checksum.digest:
                raise ChecksumMismatch
        except BaseException:
            out.truncate(upload.offset)
            raise
        out.flush()
        os.fsync(out.fileno())
    return written


def _file_from(upload: Upload) -> File:
    """The file of a complete upload, created by the plain upload's service."""
    with _storage().open(upload.content, "rb") as stored:
        return services.file_create(
            owner=upload.owner,
            upload=UploadedFile(
                stored,
                # Upload-Metadata is optional: a file needs a name all the same.
                name=upload.filename or "upload.json",
                content_type=upload.filetype,
                size=upload.length,
            ),
            name=upload.filename,
            declared_type=upload.filetype,
            stored=upload.content,
        )


def upload_terminate(*, owner: AbstractBaseUser, upload_id) -> None:
    """Delete the owner's upload, and its bytes unless a file has them.

    Upload.DoesNotExist when there is none (expired ones included).
    """
    with transaction.atomic():
        upload = Upload.objects.select_for_update().get(pk=upload_id, owner=owner)
        _delete(upload)


def _delete(upload: Upload) -> None:
    """Remove the locked upload's row, then (after commit) its bytes if unfinished.

    Bytes left behind by a failed removal are the leftovers sweep's, once no row
    refers to them.
    """
    content = None if upload.is_complete else upload.content
    upload.delete()
    if content:
        transaction.on_commit(lambda: _storage().delete(content))


def uploads_expire() -> int:
    """Delete the uploads past their expiry (bytes too, if unfinished); how many."""
    removed = 0
    now = timezone.now()
    for upload_id in Upload.objects.filter(expires__lte=now).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            upload = (
                Upload.objects.select_for_update()
                .filter(pk=upload_id, expires__lte=now)
                .first()
            )
            if upload is not None:
                _delete(upload)
                removed += 1
    if removed:
        logger.info("expired uploads deleted", extra={"count": removed})
    return removed
