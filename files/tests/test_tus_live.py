"""Resumable uploads through real daphne and workers: `manage.py upload --url`
(tuspy) over a connection that drops, and daphne's memory during a 1 GB upload.

A small TCP proxy between the client and daphne cuts the connection once, mid
chunk, after a given number of bytes: the upload goes on from the server's offset
and the file ends processed with exact counts.
"""

import contextlib
import hashlib
import io
import os
import shutil
import socket
import threading
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

from conftest import live_env, start_web
from dwellfi.processes import free_port
from files import client
from files.models import File, Upload

from .factories import expected_anomalies, metrics_bytes, user_create

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024
RECORDS = 60_000  # about 11.5 MB: the large-file worker's


class CuttingProxy:
    """Forwards 127.0.0.1:port to daphne; once `cut_after` bytes have gone to the
    server, it drops that connection (both ways) mid-request, then forwards
    everything as it comes."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.forwarded = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            pair = (downstream, upstream)
            for args in ((*pair, pair, True), (upstream, downstream, pair)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, source, target, pair, to_server: bool = False) -> None:
        try:
            while data := source.recv(64 * 1024):
                if to_server and self._cut_here(len(data)):
                    keep = self.cut_after - (self.forwarded - len(data))
                    target.sendall(data[:keep])
                    for sock in pair:
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0"
                        )
                        sock.close()  # a reset: the connection is gone
                    return
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in pair:
                sock.close()

    def _cut_here(self, size: int) -> bool:
        with self._lock:
            self.forwarded += size
            if self.cuts == 0 and self.forwarded >= self.cut_after:
                self.cuts = 1
                return True
            return False


@pytest.fixture
def token(rules) -> str:
    return Token.objects.create(user=user_create()).key


@pytest.fixture
def export(tmp_path) -> Path:
    path = tmp_path / "large.json"
    path.write_bytes(metrics_bytes(RECORDS))
    return path


def processed_line(path: Path, file: File) -> str:
    return (
        f"{path}: file {file.pk} processed: {RECORDS} records, "
        f"{expected_anomalies(RECORDS)} anomalies, 0 invalid records"
    )


def upload_over_http(path: Path, url: str, token: str, resume_file: Path, *options):
    """`manage.py upload --url` of `path`, remembering it in `resume_file`."""
    call_command(
        "upload",
        str(path),
        "--url",
        url,
        "--token",
        token,
        "--resume-file",
        str(resume_file),
        *options,
    )


def test_a_dropped_connection_resumes_from_the_servers_offset(
    live_stack, token, export, tmp_path, capsys
):
    port = int(live_stack.base_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after=int(5.5 * MiB))  # in the third chunk
    try:
        upload_over_http(
            export,
            proxy.url,
            token,
            tmp_path / "resume.json",
            "--chunk-size",
            str(2 * MiB),
            "--retry-delay",
            "0.1",
        )
    finally:
        proxy.close()
    out = capsys.readouterr().out
    assert proxy.cuts == 1
    # Two chunks were stored before the cut; the third goes again from there.
    assert f"resuming at byte {4 * MiB} after connection failed" in out
    file = File.objects.get(name="large.json")
    assert processed_line(export, file) in out
    assert file.size == export.stat().st_size
    assert file.sha256 == hashlib.sha256(export.read_bytes()).hexdigest()
    assert file.record_count == RECORDS
    assert file.anomaly_count == expected_anomalies(RECORDS)


def test_a_dropped_creation_is_tried_again(live_stack, token, export, tmp_path, capsys):
    """The connection of the request that creates the upload drops: the client
    tries again and the upload goes through, once."""
    port = int(live_stack.base_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after=16)  # inside the POST's request line
    try:
        upload_over_http(
            export,
            proxy.url,
            token,
            tmp_path / "resume.json",
            "--chunk-size",
            str(8 * MiB),
            "--retry-delay",
            "0.1",
        )
    finally:
        proxy.close()
    assert proxy.cuts == 1
    file = File.objects.get(name="large.json")
    assert processed_line(export, file) in capsys.readouterr().out
    assert Upload.objects.filter(owner=file.owner).count() == 1


def test_an_interrupted_run_is_resumed_by_the_next(
    live_stack, token, export, tmp_path, capsys
):
    port = int(live_stack.base_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after=int(7.5 * MiB))
    resume_file = tmp_path / "resume.json"
    command = [export, proxy.url, token, resume_file, "--chunk-size", str(2 * MiB)]
    try:
        with pytest.raises(CommandError, match="1 of 1 files"):
            upload_over_http(*command, "--retries", "0")
        err = capsys.readouterr().err
        assert f"interrupted at byte {6 * MiB}: interrupted after 0 retries" in err
        assert "run the command again to resume" in err
        assert not File.objects.exists()

        upload_over_http(*command)
    finally:
        proxy.close()
    out = capsys.readouterr().out
    assert f"resuming at byte {6 * MiB} after an earlier upload of this file" in out
    file = File.objects.get(name="large.json")
    assert processed_line(export, file) in out
    assert file.sha256 == hashlib.sha256(export.read_bytes()).hexdigest()
    # The finished upload is forgotten: a third run uploads the file anew.
    assert client.resume_storage(resume_file)._db.all() == []


def test_an_upload_the_server_no_longer_has_starts_afresh(
    live_stack, token, tmp_path, capsys
):
    path = tmp_path / "small.json"
    path.write_bytes(metrics_bytes(2_000))
    resume_file = tmp_path / "resume.json"
    server = client.Server(live_stack.base_url, token)
    storage = client.resume_storage(resume_file)
    fingerprinter = client.path_fingerprint(server, path)
    with path.open("rb") as handle:
        storage.set_item(
            fingerprinter.get_fingerprint(handle),
            f"{server.uploads_url}00000000-0000-0000-0000-000000000000/",
        )
    storage.close()
    upload_over_http(path, live_stack.base_url, token, resume_file)
    out = capsys.readouterr().out
    assert "resuming" not in out
    assert "processed: 2000 records, 200 anomalies" in out


def test_refusals_are_reported_without_retrying(live_stack, token, tmp_path, capsys):
    text = tmp_path / "notes.json"
    text.write_bytes(b"hello, not JSON")
    with pytest.raises(CommandError, match="1 of 1 files"):
        upload_over_http(
            text,
            live_stack.base_url,
            token,
            tmp_path / "resume.json",
            "--retry-delay",
            "30",
        )
    err = capsys.readouterr().err
    assert (
        f"{text}: not uploaded: HTTP 400: file: The submitted file is not JSON." in err
    )
    assert "run the command again" not in err

    with pytest.raises(CommandError, match="1 of 1 files"):
        upload_over_http(text, live_stack.base_url, "wrong", tmp_path / "resume.json")
    assert "not uploaded: HTTP 401: Invalid token." in capsys.readouterr().err


# --- daphne's memory during a large upload ---------------------------------------


class GeneratedDocument(io.RawIOBase):
    """A JSON array of `size` bytes (`[0,0,…,0]`), made as it is read: seekable,
    never in memory."""

    def __init__(self, size: int) -> None:
        assert size >= 3 and size % 2 == 1
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.size}
        self.position = base[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        start, end = self.position, min(self.position + len(buffer), self.size)
        if start >= end:
            return 0
        # Byte i: "[" first, "]" last, "0" at odd positions, "," at even ones.
        pattern = b"0," if start % 2 else b",0"
        chunk = bytearray((pattern * ((end - start) // 2 + 1))[: end - start])
        if start == 0:
            chunk[0:1] = b"["
        if end == self.size:
            chunk[-1:] = b"]"
        buffer[: len(chunk)] = chunk
        self.position = end
        return len(chunk)


def peak_rss(pid: int) -> int:
    """The process's peak resident memory since its counters were last reset."""
    return _status_bytes(pid, "VmHWM")


def rss(pid: int) -> int:
    """The process's resident memory now."""
    return _status_bytes(pid, "VmRSS")


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no {field}")


def reset_peak_rss(pid: int) -> None:
    """Start the peak over from the current RSS (Linux: clear_refs 5). Where that
    is not allowed the peak since start is kept: still an upper bound."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def test_daphne_memory_stays_flat_during_a_large_resumable_upload(
    tmp_path, redis_server, user
):
    """The body never sits whole in daphne: only a chunk at a time does.

    A daphne of its own (so its peak counts this upload alone) on a Redis of its
    own (so no worker processes the gigabyte of zeros)."""
    size = int(os.environ.get("DWELLFI_TEST_LARGE_UPLOAD_BYTES", 1024**3)) | 1
    media = tmp_path / "media"
    media.mkdir()
    env = {**live_env(media), "REDIS_URL": redis_server.url}
    port = free_port()
    web = start_web(env, tmp_path, port, name="web-rss")
    token = Token.objects.create(user=user).key
    server = client.Server(f"http://127.0.0.1:{port}", token)
    try:
        chunk_size = server.chunk_size()  # warms daphne up: OPTIONS, then GET
        httpx.get(f"{server.url}/healthz", timeout=10)
        idle_rss = rss(web.pid)
        reset_peak_rss(web.pid)
        file_id = client.upload(
            server, GeneratedDocument(size), name="zeros.json", chunk_size=chunk_size
        )
        peak = peak_rss(web.pid)
        file = File.objects.get(pk=file_id)
        assert file.size == size and file.status == File.Status.QUEUED
    finally:
        web.stop()
        shutil.rmtree(media)  # a gigabyte: not kept for pytest's last three runs
    assert peak - idle_rss < 100 * MiB, (
        f"daphne went from {idle_rss // MiB} MiB to a peak of {peak // MiB} MiB"
    )


def test_daphne_holds_a_single_request_upload_once(tmp_path, redis_server, user):
    """A plain `POST /api/files/` is held whole by daphne, but once: Twisted no
    longer parses it into form arguments too (dwellfi/webserver.py), which took
    about eight copies of the body (150 MB: 116 MB to 1.4 GB)."""
    size = 100 * MiB
    body = (b"[" + b"0," * (size // 2))[: size - 1] + b"]"
    media = tmp_path / "media"
    media.mkdir()
    env = {**live_env(media), "REDIS_URL": redis_server.url}
    port = free_port()
    web = start_web(env, tmp_path, port, name="web-post-rss")
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        idle_rss = rss(web.pid)
        reset_peak_rss(web.pid)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/api/files/",
            files={"file": ("zeros.json", body)},
            headers=headers,
            timeout=120,
        )
        peak = peak_rss(web.pid)
        assert answer.status_code == 201, answer.text
        assert File.objects.get(pk=answer.json()["id"]).size == size
    finally:
        web.stop()
        shutil.rmtree(media)
    assert peak - idle_rss < 2 * size, (
        f"daphne went from {idle_rss // MiB} MiB to a peak of {peak // MiB} MiB"
    )
