"""What the benchmarks share: the stack's data, its clients, the arrivals of
events and messages, and the table's rows (`bench/run.py` runs them)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis.asyncio
import websockets

from bench.stack import BASE_DIR, manage

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/dwellfi_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
MB = 1000 * 1000
# The queues a worker serves when it alone processes every file.
QUEUES = "celery,large"


@dataclass
class Sizes:
    large: str = "113MB"  # about 600,000 records
    memory_small: str = "1MB"
    memory_large: str = "200MB"
    small: str = "10KB"
    latency_uploads: int = 200
    throughput_seconds: float = 60
    repeat: int = 3


QUICK = Sizes(
    large="11MB",
    memory_large="20MB",
    latency_uploads=30,
    throughput_seconds=10,
    repeat=1,
)


# --- setup ---------------------------------------------------------------------


def ensure_database(url: str) -> None:
    """Create the benchmark database when it does not exist yet."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = info.pop("dbname")
    with psycopg.connect(**info, dbname="postgres", autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def bench_env(tmp: Path) -> dict[str, str]:
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if not database_url.startswith(("postgres://", "postgresql://")):
        sys.exit("make bench measures PostgreSQL: set DATABASE_URL to a scratch one")
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DWELLFI_MEDIA_ROOT": str(tmp / "media"),
        "DWELLFI_UPLOAD_RATE": "1000000/min",
        # Throughput, not the per-user limits, is what is measured here.
        "DWELLFI_QUOTA_FILES": "0",
        "DWELLFI_QUOTA_PROCESSING": "0",
        "DWELLFI_MAX_SOCKETS_PER_USER": "0",
        "PYTHONUNBUFFERED": "1",
    }


def generate(env: dict[str, str], tmp: Path, name: str, size: str) -> Path:
    path = tmp / f"{name}.json"
    manage(env, "generate_metrics", str(path), "--size", size)
    return path


def bench_user() -> tuple[int, str]:
    """The benchmark's user, without the files of earlier runs."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from files.models import File
    from notifications.models import Event, EventCursor

    user, _ = get_user_model().objects.get_or_create(username="bench")
    File.objects.filter(owner=user).delete()
    Event.objects.filter(user=user).delete()
    EventCursor.objects.filter(user=user).delete()
    token, _ = Token.objects.get_or_create(user=user)
    return user.pk, token.key


def placeholder_file(user_id: int, name: str) -> int:
    """A file row for a baseline's records to belong to."""
    from files.models import File

    return File.objects.create(
        owner_id=user_id,
        updated_by_id=user_id,
        name=name,
        content="bench/none.json",
        size=0,
        status="failed",
    ).pk


def clear_records(file_id: int) -> None:
    from files.models import MetricRecord

    MetricRecord.objects.filter(file_id=file_id).delete()


# --- measuring -----------------------------------------------------------------


class Arrivals:
    """When each message of one listener arrived, by key; `wait` for one."""

    def __init__(self) -> None:
        self.arrived: dict[tuple, float] = {}
        self._waiters: dict[tuple, asyncio.Future] = {}
        self._task: asyncio.Task | None = None
        self._connected = asyncio.Event()

    async def __aenter__(self) -> Arrivals:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._connected.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _listen(self) -> None:
        raise NotImplementedError

    def _arrived(self, key: tuple) -> None:
        now = time.perf_counter()
        self.arrived.setdefault(key, now)
        waiter = self._waiters.get(key)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)

    async def wait(self, key: tuple, timeout: float = 600) -> float:
        """When the message with this key arrived, waiting for it if need be."""
        if key in self.arrived:
            return self.arrived[key]
        waiter = self._waiters.setdefault(
            key, asyncio.get_running_loop().create_future()
        )
        done, _ = await asyncio.wait(
            [waiter, self._task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter in done:
            return waiter.result()
        if self._task in done:
            raise RuntimeError(f"the listener stopped: {self._task.exception()!r}")
        raise TimeoutError(f"no {key} after {timeout} s")


class Events(Arrivals):
    """One WebSocket of the bench user.

    Keys are (file_id, type) for file events and ("bench.ping", n) for the floor.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def _listen(self) -> None:
        # No keepalive pings: a client that is busy between measurements would
        # miss a pong and lose the connection (and every message after it).
        async with websockets.connect(
            self.url, max_size=None, ping_interval=None
        ) as ws:
            self._connected.set()
            async for raw in ws:
                message = json.loads(raw)
                kind = message.get("type")
                self._arrived(
                    ("bench.ping", message["n"])
                    if kind == "bench.ping"
                    else (message.get("file_id"), kind)
                )


class Published(Arrivals):
    """A subscriber to one Redis channel, for the bare floor; keys are (n,)."""

    def __init__(self, url: str, channel: str) -> None:
        super().__init__()
        self.url, self.channel = url, channel

    async def _listen(self) -> None:
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(self.channel)
                self._connected.set()
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._arrived((int(message["data"]),))
        finally:
            await client.aclose()


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.http = httpx.AsyncClient(
            base_url=self.base,
            headers={"Authorization": f"Token {token}"},
            timeout=600,
        )

    async def upload(
        self, path: Path | None = None, data: bytes = b"", name: str = "metrics.json"
    ) -> int:
        content = path.read_bytes() if path is not None else data
        response = await self.http.post("/api/files/", files={"file": (name, content)})
        if response.status_code != 201:
            raise RuntimeError(f"upload: {response.status_code} {response.text}")
        return response.json()["id"]

    async def resumable(self, data: bytes, name: str = "metrics.json") -> Resumable:
        """A tus upload of `data` sent but for its last chunk (`Resumable.finish`)."""
        base64_name = base64.b64encode(name.encode()).decode()
        created = await self.http.post(
            "/api/uploads/",
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(len(data)),
                "Upload-Metadata": f"filename {base64_name}",
            },
        )
        if created.status_code != 201:
            raise RuntimeError(f"upload: {created.status_code} {created.text}")
        upload = Resumable(self.http, created.headers["Location"], data)
        while len(data) - upload.offset > TUS_CHUNK:
            await upload.send(TUS_CHUNK)
        return upload

    async def detail(self, file_id: int) -> dict[str, Any]:
        return (await self.http.get(f"/api/files/{file_id}/")).json()


# The chunks of the bench's resumable uploads (the server's default limit).
TUS_CHUNK = 8 * 1024 * 1024


@dataclass
class Resumable:
    """A tus upload under way: `send` a chunk, `finish` with the rest."""

    http: httpx.AsyncClient
    url: str
    data: bytes
    offset: int = 0

    async def send(self, size: int) -> httpx.Response:
        response = await self.http.patch(
            self.url,
            content=self.data[self.offset : self.offset + size],
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": str(self.offset),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        if response.status_code != 204:
            raise RuntimeError(f"chunk: {response.status_code} {response.text}")
        self.offset = int(response.headers["Upload-Offset"])
        return response

    async def finish(self) -> int:
        """Send the last chunk; the id of the file it makes."""
        response = await self.send(len(self.data) - self.offset)
        return int(response.headers["DwellFi-File-Id"])


async def processed(events: Events, file_id: int, timeout: float = 900) -> float:
    """When `file.processed` arrived; an error if the file failed instead."""
    waits = [
        asyncio.create_task(events.wait((file_id, outcome), timeout))
        for outcome in ("file.processed", "file.failed")
    ]
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()
    result = done.pop().result()  # raises the timeout, if it was one
    if (file_id, "file.processed") not in events.arrived:
        raise RuntimeError(f"file {file_id} failed")
    return result


def child_peak_rss(pid: int) -> int:
    """The largest peak RSS (bytes) among the children of `pid`: the pool processes."""
    peaks = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
                continue
            status = (entry / "status").read_text()
        except (OSError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) * 1024)
    if not peaks:
        raise RuntimeError(f"no pool process under worker {pid}")
    return max(peaks)


def quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def baseline(env: dict[str, str], kind: str, path: Path, file_id: int) -> float:
    """Records per second of a baseline pipeline, in a process of its own."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.baselines", kind, str(path), str(file_id)],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    clear_records(file_id)
    return figures["records"] / figures["seconds"]


# --- the benchmarks --------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    baseline: str
    ratio: str
    target: str
    met: bool
