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
  are a plain upload's, and a file is created exactly once. An upload that
  `replaces` one of its owner's files gives that file its new content through
  `services.file_update` instead, as a PUT does; once that file is deleted, the
  upload is not found (404) and goes with the expired ones. The hash reads the
  stored bytes back (about 2 s a GB here: hashlib's state cannot be kept between
  requests, which may reach different processes). A refused file (not JSON, over
  a quota) ends its upload: the row and the bytes go.
* An unfinished upload idle past DWELLFI_UPLOAD_EXPIRY_SECONDS is deleted with
  its bytes by the periodic `uploads_expire`; a finished one's row goes then too
  (its bytes are the file's).

Where the bytes go depends on the storage (the storage API itself has no append):

* On disk (FileSystemStorage) a chunk is appended to the upload's file.
* In S3 (django-storages) the upload is an S3 multipart upload. S3 takes parts of
  at least 5 MiB (but the last), and tus clients may send smaller chunks: bytes
  short of a part wait in a tail object of their own, which the next chunk joins.
  The last chunk completes the multipart upload into the file's object. A tail
  replaced or dropped is deleted after commit, so a failed commit still finds the
  one its row names.
"""

import base64
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import BinaryIO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.base import File as StoredBytes
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import services
from .exceptions import FileGone, QuotaExceeded, UploadRefused
from .models import File, Upload, upload_path
from .quotas import quota_check
from .uploads import in_s3

logger = logging.getLogger(__name__)

# Pieces of the request body copied to storage at a time.
COPY_PIECE = 1024 * 1024
# The least S3 takes as a part of a multipart upload but the last one.
S3_MIN_PART = 5 * 1024 * 1024
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
    *,
    owner: AbstractBaseUser,
    length: int,
    filename: str,
    filetype: str = "",
    replaces: File | None = None,
) -> Upload:
    """Start an upload of `length` bytes; its bytes are stored as they come.

    With `replaces` (one of the owner's files) the bytes become that file's new
    content. Raises QuotaExceeded when the owner has no room for the file,
    counting the bytes its unfinished uploads will add.
    """
    pending = Upload.objects.filter(owner=owner, file__isnull=True).aggregate(
        bytes=Coalesce(Sum("length"), 0)
    )["bytes"]
    if replaces is None:
        quota_check(owner_id=owner.pk, files=1, size=length + pending, processing=1)
    else:
        services.quota_for_new_run(replaces, size=length + pending)
    upload = Upload(
        owner=owner,
        filename=filename[:255],  # cleaned for display by the file service
        filetype=filetype[:100],
        length=length,
        replaces=replaces,
        expires=_expiry(),
    )
    store = _store()
    store.start(upload)
    try:
        upload.save(force_insert=True)
    except BaseException:
        store.discard(upload)
        raise
    return upload


def upload_get(*, owner: AbstractBaseUser, upload_id, lock: bool = False) -> Upload:
    """The owner's upload; Upload.DoesNotExist for anyone else's and for one whose
    file to replace is gone, UploadGone once it expired."""
    rows = Upload.objects.filter(pk=upload_id, owner=owner)
    upload = (rows.select_for_update() if lock else rows).get()
    if upload.expires <= timezone.now():
        raise UploadGone
    replacing = upload.replaces_id is not None and upload.file_id is None
    if replacing and not File.objects.filter(pk=upload.replaces_id).exists():
        raise Upload.DoesNotExist
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
            upload.offset += _store().append(upload, _checked(upload, body, checksum))
            upload.expires = _expiry()
            if upload.is_complete:
                upload.file = _file_from(upload)
            upload.save(update_fields=["offset", "expires", "file", "parts", "tail"])
    except (UploadRefused, QuotaExceeded):
        upload_terminate(owner=owner, upload_id=upload_id)
        raise
    except FileGone:  # the file it replaces was deleted during the last chunk
        upload_terminate(owner=owner, upload_id=upload_id)
        raise Upload.DoesNotExist from None
    return upload


def _checked(
    upload: Upload, body: BinaryIO, checksum: Checksum | None
) -> Iterator[bytes]:
    """The chunk `body` in pieces, checked as they come: ChunkTooLarge, PastLength,
    and after the last piece ChecksumMismatch."""
    room = upload.length - upload.offset
    limit = settings.DWELLFI_UPLOAD_CHUNK_BYTES
    digest = CHECKSUMS[checksum.algorithm]() if checksum else None
    read = 0
    while piece := body.read(COPY_PIECE):
        read += len(piece)
        if read > limit:
            raise ChunkTooLarge
        if read > room:
            raise PastLength
        if digest is not None:
            digest.update(piece)
        yield piece
    if digest is not None and digest.digest() != checksum.digest:
        raise ChecksumMismatch


def _store() -> "DiskStore | S3Store":
    storage = _storage()
    return S3Store(storage) if in_s3(storage) else DiskStore(storage)


class DiskStore:
    """An upload's bytes in a local file the chunks are appended to."""

    def __init__(self, storage) -> None:
        self.storage = storage

    def start(self, upload: Upload) -> None:
        name = upload_path(None, upload.filename)
        upload.content = self.storage.save(name, ContentFile(b""))

    def append(self, upload: Upload, pieces: Iterator[bytes]) -> int:
        """Write the chunk at the upload's offset, durably; how many bytes it was.
        Nothing stays written if anything fails."""
        written = 0
        with open(self.storage.path(upload.content), "r+b") as out:
            out.seek(upload.offset)
            out.truncate()
            try:
                for piece in pieces:
                    out.write(piece)
                    written += len(piece)
                out.flush()
                os.fsync(out.fileno())
            except BaseException:
                out.truncate(upload.offset)
                raise
        return written

    def discard(self, upload: Upload) -> None:
        self.storage.delete(upload.content)


class S3Store:
    """An upload's bytes as the parts of an S3 multipart upload (the module's
    docstring says how chunks under S3's least part size wait)."""

    def __init__(self, storage) -> None:
        self.storage = storage

    def _multipart(self, upload: Upload):
        # The object's key as S3Storage's own methods derive it from a name.
        key = self.storage._normalize_name(upload.content)
        return self.storage.bucket.Object(key).MultipartUpload(upload.multipart_id)

    def start(self, upload: Upload) -> None:
        upload.content = self.storage.get_available_name(
            upload_path(None, upload.filename)
        )
        key = self.storage._normalize_name(upload.content)
        started = self.storage.bucket.Object(key).initiate_multipart_upload(
            ContentType="application/octet-stream"
        )
        upload.multipart_id = started.id

    def append(self, upload: Upload, pieces: Iterator[bytes]) -> int:
        """Add the chunk to the waiting tail; make a part of them once there is
        enough, or this is the last; how many bytes the chunk was."""
        with tempfile.TemporaryFile() as joined:
            if upload.tail:
                with self.storage.open(upload.tail, "rb") as tail:
                    shutil.copyfileobj(tail, joined, COPY_PIECE)
            waiting = joined.tell()
            for piece in pieces:
                joined.write(piece)
            size = joined.tell()
            written = size - waiting
            last = upload.offset + written == upload.length
            joined.seek(0)
            replaced = upload.tail
            if size >= S3_MIN_PART or last:
                self._add_part(upload, joined, size)
                upload.tail = ""
            else:
                tail = upload_path(None, f"{upload.pk}.tail")
                upload.tail = self.storage.save(tail, StoredBytes(joined))
        if replaced:
            transaction.on_commit(lambda: self.storage.delete(replaced))
        if last:
            self._multipart(upload).complete(
                MultipartUpload={
                    "Parts": [
                        {"PartNumber": number, "ETag": part["etag"]}
                        for number, part in enumerate(upload.parts, start=1)
                    ]
                }
            )
        return written

    def _add_part(self, upload: Upload, body: BinaryIO, size: int) -> None:
        # A part whose row failed to commit is sent again under the same number.
        number = len(upload.parts) + 1
        part = self._multipart(upload).Part(number)
        answer = part.upload(Body=body, ContentLength=size)
        upload.parts = [*upload.parts, {"etag": answer["ETag"], "size": size}]

    def discard(self, upload: Upload) -> None:
        if upload.tail:
            self.storage.delete(upload.tail)
        # Already aborted, or completed (the file's bytes then): nothing to do.
        with contextlib.suppress(
            self.storage.connection.meta.client.exceptions.NoSuchUpload
        ):
            self._multipart(upload).abort()


def _file_from(upload: Upload) -> File:
    """The file of a complete upload, created by the plain upload's service, or
    the file it replaces, given its new content by the replacing one."""
    with _storage().open(upload.content, "rb") as stored:
        content = UploadedFile(
            stored,
            # Upload-Metadata is optional: a file needs a name all the same.
            name=upload.filename or "upload.json",
            content_type=upload.filetype,
            size=upload.length,
        )
        if upload.replaces_id is not None:
            return services.file_update(
                file=File(pk=upload.replaces_id, owner_id=upload.owner_id),
                by=upload.owner,
                upload=content,
                name=upload.filename or None,
                stored=upload.content,
            )
        return services.file_create(
            owner=upload.owner,
            upload=content,
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
    complete = upload.is_complete
    upload.delete()
    if not complete:
        transaction.on_commit(lambda: _store().discard(upload))


def uploads_expire() -> int:
    """Delete the uploads past their expiry, and the unfinished ones whose file to
    replace is gone (bytes too, if unfinished); how many."""
    removed = 0
    now = timezone.now()
    replaced_gone = ~Exists(File.objects.filter(pk=OuterRef("replaces_id")))
    over = Q(expires__lte=now) | Q(
        replaced_gone, replaces__isnull=False, file__isnull=True
    )
    for upload_id in Upload.objects.filter(over).values_list("pk", flat=True):
        with transaction.atomic():
            rows = Upload.objects.select_for_update().filter(over, pk=upload_id)
            upload = rows.first()
            if upload is not None:
                _delete(upload)
                removed += 1
    if removed:
        logger.info("expired uploads deleted", extra={"count": removed})
    return removed
