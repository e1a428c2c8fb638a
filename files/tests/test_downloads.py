"""Downloads: streamed from storage in chunks, never held whole in the web process.

The memory test runs a daphne of its own and reads its resident memory from /proc
while 20 clients download a 200 MB file at once. The proxy's X-Accel-Redirect
path is followed end to end through nginx in `test_proxy.py`.
"""

import hashlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from conftest import Process, free_port, live_env, start_web
from files import services
from files.models import File

from .factories import server_4_bytes, user_create

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.django_db

BIG = 200 * 1000 * 1000
PARALLEL = 20
MEMORY_BUDGET = 100 * 1024 * 1024


def rss(pid: int) -> int:
    """The resident memory of a process, in bytes (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(pid)


class PeakMemory:
    """Samples a process's resident memory every 20 ms in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def parallel_downloads(pid: int, download: Callable[[], None]) -> tuple[int, int]:
    """Run PARALLEL `download`s at once: the resident memory of the web process
    `pid` before, and at its peak while they ran."""
    before = rss(pid)
    with PeakMemory(pid) as memory:
        clients = [threading.Thread(target=download) for _ in range(PARALLEL)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
    logger.info(f"web RSS {before >> 20} MB, peak {memory.peak >> 20} MB")
    return before, memory.peak


def big_file(owner, media: Path, size: int = BIG) -> File:
    """A stored file of `size` bytes, written straight to the media root (an upload
    of that size would cost the web process far more than the download does)."""
    name = f"uploads/{uuid.uuid4().hex}.json"
    block = bytes(range(256)) * 4096  # 1 MiB, not all one byte value
    digest = hashlib.sha256()
    (media / name).parent.mkdir(parents=True, exist_ok=True)
    with (media / name).open("wb") as out:
        for start in range(0, size, len(block)):
            chunk = block[: size - start]
            out.write(chunk)
            digest.update(chunk)
    file = File(
        owner=owner,
        updated_by=owner,
        name='big "export".json',
        size=size,
        sha256=digest.hexdigest(),
        status=File.Status.FAILED,
    )
    file.content.name = name
    file.save()
    return file


@pytest.fixture(scope="module")
def own_web(
    django_db_setup, django_db_blocker, tmp_path_factory
) -> Iterator[tuple[Process, int]]:
    """A daphne of this module's own (and its port): its memory is what is measured."""
    logdir = tmp_path_factory.mktemp("downloads")
    media = tmp_path_factory.getbasetemp() / "media"
    port = free_port()
    web = start_web(live_env(media), logdir, port)
    yield web, port
    web.stop()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_parallel_downloads_of_a_200_mb_file_stay_within_100_mb(own_web):
    """Through daphne: 20 clients download a 200 MB file at once; every one gets
    all of it with its length, a safe attachment header and nosniff, and daphne's
    resident memory stays within 100 MB of what it was before."""
    web, port = own_web
    user = user_create()
    media = Path(settings.MEDIA_ROOT)
    small, file = big_file(user, media, size=1 << 20), big_file(user, media)
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}

    def download_url(file: File) -> str:
        return f"http://127.0.0.1:{port}/api/files/{file.pk}/download/"

    url = download_url(file)
    results: list[tuple[int, dict[str, str], int, str]] = []

    def download() -> None:
        digest = hashlib.sha256()
        received = 0
        with httpx.stream("GET", url, headers=headers, timeout=120) as response:
            for chunk in response.iter_raw(1 << 20):
                received += len(chunk)
                if not results:  # one client checks the bytes, the others count
                    digest.update(chunk)
            results.append(
                (response.status_code, response.headers, received, digest.hexdigest())
            )

    # Warm up first: the first requests import and cache what every later one uses.
    for _ in range(3):
        warm = httpx.get(download_url(small), headers=headers)
        assert warm.status_code == 200 and len(warm.content) == 1 << 20
    try:
        before, peak = parallel_downloads(web.popen.pid, download)
    finally:
        for stored in (small, file):
            (media / stored.content.name).unlink()

    assert len(results) == PARALLEL
    for status, response_headers, received, _ in results:
        assert status == 200
        assert received == BIG
        assert response_headers["Content-Length"] == str(BIG)
        assert response_headers["Content-Type"] == "application/octet-stream"
        assert response_headers["Content-Disposition"] == (
            'attachment; filename="big \\"export\\".json"'
        )
        assert response_headers["X-Content-Type-Options"] == "nosniff"
    assert file.sha256 in {digest for *_, digest in results}
    assert peak - before < MEMORY_BUDGET, f"daphne grew by {(peak - before) >> 20} MB"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_client_that_stops_reading_is_not_buffered_by_daphne(own_web):
    """daphne has no backpressure of its own (daphne#170): a download to a client
    that stopped reading would pile the whole file up in its memory. Three such
    clients of a 200 MB file, stalled for three seconds, cost daphne almost
    nothing (dwellfi/backpressure.py makes the stream wait for the socket)."""
    web, port = own_web
    user = user_create()
    file = big_file(user, Path(settings.MEDIA_ROOT))
    token = Token.objects.create(user=user).key
    request = (
        f"GET /api/files/{file.pk}/download/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Token {token}\r\n\r\n"
    ).encode()
    stalled = []
    try:
        before = rss(web.popen.pid)
        with PeakMemory(web.popen.pid) as memory:
            for _ in range(3):
                client = socket.create_connection(("127.0.0.1", port), timeout=10)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                client.sendall(request)
                stalled.append(client)
            assert all(b"200 OK" in client.recv(64 * 1024) for client in stalled)
            time.sleep(3)
    finally:
        for client in stalled:
            client.close()
        (Path(settings.MEDIA_ROOT) / file.content.name).unlink()
    assert memory.peak - before < 30 * 1024 * 1024, (before, memory.peak)
    assert web.popen.poll() is None


def test_behind_nginx_a_download_is_only_headers_for_x_accel_redirect(
    api, user, settings
):
    """With DWELLFI_X_ACCEL_PREFIX the answer carries no bytes: nginx serves the
    stored file from its internal location, under the headers given here."""
    settings.DWELLFI_X_ACCEL_PREFIX = "/_protected/"
    file = services.file_create(
        owner=user, upload=SimpleUploadedFile("a.json", server_4_bytes()), name="a b"
    )
    response = api.get(f"/api/files/{file.pk}/download/")
    assert response.status_code == 200
    assert response["X-Accel-Redirect"] == f"/_protected/{file.content.name}"
    assert response.content == b""
    assert response["Content-Disposition"] == 'attachment; filename="a b"'
    assert response["Content-Type"] == "application/octet-stream"


def test_from_s3_a_download_is_a_redirect_to_a_presigned_url(user, settings):
    """With the bytes in S3 the object store sends them: a redirect to a URL signed
    for five minutes that asks S3 for the same attachment headers. (Signing is
    local: no request leaves this machine.)"""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "dwellfi-test",
                "region_name": "eu-west-1",
                "access_key": "AKIAEXAMPLEEXAMPLE00",
                "secret_key": "example-secret-key-example-secret-key-00",
                "signature_version": "s3v4",
            },
        },
    }
    file = File.objects.create(
        owner=user, name="ünïcode.json", size=2, sha256="0" * 64, content="uploads/x"
    )
    client = APIClient()
    client.force_authenticate(user)
    response = client.get(f"/api/files/{file.pk}/download/")
    assert response.status_code == 302
    location = httpx.URL(response["Location"])
    assert location.host.startswith("dwellfi-test.s3.")
    assert location.path == "/uploads/x"
    query = dict(location.params)
    assert query["X-Amz-Expires"] == "300"
    assert query["X-Amz-Signature"]
    assert query["response-content-type"] == "application/octet-stream"
    assert query["response-content-disposition"] == (
        "attachment; filename*=utf-8''%C3%BCn%C3%AFcode.json"
    )
