"""Uploading to a running DwellFi over HTTP, resumably: tus 1.0 through tuspy.

`manage.py upload --url` uses this. A file goes to `/api/uploads/` in chunks of
the size the server advertises (its OPTIONS answer's `DwellFi-Max-Chunk-Size`).
When a chunk fails on the way (the connection dropped, the server restarted or
answered 5xx, 409 or 429), the client waits, asks the server for its offset (HEAD)
and goes on from there, up to `retries` times in a row. The upload's URL is kept
in a resume file (tuspy's URL storage) until the upload is complete, so running
the same command again after it was interrupted or killed goes on from the
server's offset too; an upload the server no longer has (expired, deleted) is
started afresh.
"""

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import requests
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError
from tusclient.fingerprint import fingerprint
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader import Uploader

DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
CHUNK_SIZE_HEADER = "DwellFi-Max-Chunk-Size"
FILE_ID_HEADER = "DwellFi-File-Id"
# Answers worth trying a chunk again for: the server may do better in a moment
# (409: it holds another offset than this client thought, HEAD tells which).
RETRYABLE = {408, 409, 423, 429}
REQUEST_TIMEOUT = 60
MAX_RETRY_DELAY = 30.0


class UploadFailed(Exception):
    """The server refused the upload or the file, or the connection stayed down.

    `offset` is how far the server had got when known (the upload goes on from
    there next time), None when nothing is left to resume.
    """

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class Server:
    """A DwellFi server and the API token to use on it."""

    url: str
    token: str

    @property
    def uploads_url(self) -> str:
        return f"{self.url.rstrip('/')}/api/uploads/"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def api_url(self, path: str) -> str:
        return f"{self.url.rstrip('/')}{path}"

    def get_json(self, url: str) -> dict:
        """GET a JSON answer; UploadFailed when the server does not answer 200."""
        try:
            response = requests.get(
                url,
                headers={**self.headers, "Accept": "application/json"},
                timeout=REQUEST_TIMEOUT,
            )
        except requests.RequestException as exc:
            raise UploadFailed(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code != 200:
            raise UploadFailed(_problem(response.status_code, response.content))
        return response.json()

    def chunk_size(self) -> int:
        """The largest chunk the server takes, from its OPTIONS answer."""
        try:
            response = requests.options(self.uploads_url, timeout=REQUEST_TIMEOUT)
        except requests.RequestException as exc:
            raise UploadFailed(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code != 204 or "Tus-Version" not in response.headers:
            raise UploadFailed(
                f"{self.uploads_url} does not take resumable uploads "
                f"(OPTIONS answered {response.status_code})"
            )
        advertised = response.headers.get(CHUNK_SIZE_HEADER, "")
        return int(advertised) if advertised.isdigit() else DEFAULT_CHUNK_BYTES


def _problem(status: int | None, content: bytes | str | None) -> str:
    """A refusal as one line: the status and the API's `detail`."""
    try:
        detail = json.loads(content or b"{}").get("detail", "")
    except (ValueError, AttributeError):
        detail = ""
    return f"HTTP {status}: {detail}" if detail else f"HTTP {status}"


class _ScopedFingerprint(fingerprint.Fingerprint):
    """tuspy's fingerprint (size and a digest of the first 64 KiB) scoped to one
    server and one file on disk, so that another server, or another file of the
    same size and beginning, never resumes this upload."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def get_fingerprint(self, fs) -> str:
        return f"{self.scope} {super().get_fingerprint(fs)}"


def default_resume_file() -> Path:
    """Where the URLs of unfinished uploads are kept between runs."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "dwellfi" / "uploads.json"


def resume_storage(path: Path) -> FileStorage:
    """The resume file (tuspy's URL storage, a small JSON database)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileStorage(str(path))


def path_fingerprint(server: Server, path: Path) -> _ScopedFingerprint:
    """The fingerprint an upload of the file at `path` to `server` is stored by."""
    stat = path.stat()
    return _ScopedFingerprint(
        f"{server.uploads_url} {path.resolve()} {stat.st_mtime_ns}"
    )


def upload(
    server: Server,
    source: Path | BinaryIO,
    *,
    name: str,
    chunk_size: int,
    retries: int = 5,
    retry_delay: float = 1.0,
    storage: FileStorage | None = None,
    fingerprinter: fingerprint.Fingerprint | None = None,
    on_progress: Callable[[int, int], None] = lambda offset, length: None,
    on_resume: Callable[[int, str], None] = lambda offset, why: None,
) -> int:
    """Upload the file at `source`, or a seekable stream, as `name`: its file id.

    Read a chunk at a time. Only a path can be remembered in `storage` (tuspy
    closes a stream it fingerprints).

    `on_progress(offset, length)` follows each chunk the server took;
    `on_resume(offset, why)` says where the upload goes on from and why (a run
    resuming a stored upload, or a chunk that failed). Raises UploadFailed.
    """
    uploader = _uploader(server, source, name, chunk_size, storage, fingerprinter)
    length = uploader.get_file_size()
    if uploader.url is None:
        _create(uploader, retries=retries, retry_delay=retry_delay)
    elif uploader.offset:
        on_resume(uploader.offset, "an earlier upload of this file")
    failures = 0
    while uploader.offset < length:
        try:
            uploader.upload_chunk()
        except TusCommunicationError as exc:
            _give_up_unless_retryable(exc, uploader, storage)
            failures += 1
            if failures > retries:
                raise UploadFailed(
                    f"interrupted after {retries} retries: {_failure(exc)}",
                    offset=uploader.offset,
                ) from exc
            _pause(retry_delay, failures)
            try:
                uploader.offset = uploader.get_offset()
            except TusCommunicationError:
                continue  # still down: the next attempt says so
            on_resume(uploader.offset, _failure(exc))
            continue
        failures = 0
        on_progress(uploader.offset, length)
    file_id = _file_id(server, uploader)
    if storage is not None:
        storage.remove_item(_storage_key(uploader))
    return file_id


def _create(uploader: Uploader, *, retries: int, retry_delay: float) -> None:
    """Create the upload on the server, trying again as for a chunk."""
    failures = 0
    while True:
        try:
            uploader.set_url(uploader.create_url())
        except TusCommunicationError as exc:
            failures += 1
            if not _retryable(exc.status_code) or failures > retries:
                raise UploadFailed(_failure(exc)) from exc
            _pause(retry_delay, failures)
            continue
        uploader.offset = 0
        return


def _retryable(status: int | None) -> bool:
    """Whether a failure may pass: no answer, a server error, a busy server."""
    return status is None or status >= 500 or status in RETRYABLE


def _pause(retry_delay: float, failures: int) -> None:
    time.sleep(min(retry_delay * 2 ** (failures - 1), MAX_RETRY_DELAY))


def _storage_key(uploader: Uploader) -> str:
    """The key the upload's URL is stored under (tuspy's own way)."""
    with uploader.get_file_stream() as stream:
        return uploader.fingerprinter.get_fingerprint(stream)


def _uploader(server, source, name, chunk_size, storage, fingerprinter) -> Uploader:
    """tuspy's uploader, resuming the stored upload of this file if the server
    still has it, else a new one."""
    client = TusClient(server.uploads_url, headers=server.headers)
    is_path = isinstance(source, Path)
    options = {
        "file_path" if is_path else "file_stream": str(source) if is_path else source,
        "chunk_size": chunk_size,
        "metadata": {"filename": name, "filetype": "application/json"},
        "store_url": storage is not None,
        "url_storage": storage,
        "fingerprinter": fingerprinter,
    }
    try:
        return client.uploader(**options)
    except TusCommunicationError as exc:
        # The stored upload's HEAD failed: gone (404, 410) starts afresh.
        if storage is None or exc.status_code not in (404, 410):
            raise UploadFailed(_failure(exc)) from exc
        with open(source, "rb") as stream:
            key = (fingerprinter or fingerprint.Fingerprint()).get_fingerprint(stream)
        storage.remove_item(key)
        return client.uploader(**options)


def _give_up_unless_retryable(
    exc: TusCommunicationError, uploader: Uploader, storage: FileStorage | None
) -> None:
    """Raise UploadFailed for a refusal that trying again cannot change."""
    status = exc.status_code
    if _retryable(status):
        return
    gone = status in (400, 403, 404, 410, 413, 415)
    if gone and storage is not None:
        # The server ended the upload (a refused file) or never will take it.
        storage.remove_item(_storage_key(uploader))
    raise UploadFailed(_failure(exc), offset=None if gone else uploader.offset) from exc


def _failure(exc: TusCommunicationError) -> str:
    if exc.status_code is None:
        return f"connection failed ({exc})"
    return _problem(exc.status_code, exc.response_content)


def _file_id(server: Server, uploader: Uploader) -> int:
    """The created file's id: the last chunk's `DwellFi-File-Id`, or, when that
    answer was lost on the way, the upload's `file` as the server has it."""
    request = uploader.request
    header = request.response_headers.get(FILE_ID_HEADER.lower()) if request else None
    if header and header.isdigit():
        return int(header)
    file_id = server.get_json(uploader.url).get("file")
    if file_id is None:
        raise UploadFailed("the server holds every byte but made no file of them")
    return int(file_id)
