"""Shared fixtures: users, API clients, anomaly rules, and the live stack.

The live stack starts real processes (daphne and a Celery worker) against the test
database and the configured Redis, for the end-to-end tests.
"""

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dwellfi import processes
from dwellfi.processes import Process, answers_redis, free_port, redis_command
from files import dispatch
from files.engine import DEFAULT_RULES
from files.models import AnomalyRule
from files.tests.factories import user_create

BASE_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _media_root(tmp_path_factory, settings) -> None:
    """Uploaded bytes go to a temporary folder, shared with live processes."""
    settings.MEDIA_ROOT = str(_session_media(tmp_path_factory))


def _session_media(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "media"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def _close_connections_after_use() -> Iterator[None]:
    """Connections opened by async code's worker threads close after each use.

    Otherwise they outlive the test and PostgreSQL cannot drop the test database.
    """
    db = settings.DATABASES["default"]
    saved = db.get("CONN_MAX_AGE", 0)
    db["CONN_MAX_AGE"] = 0
    yield
    db["CONN_MAX_AGE"] = saved


@pytest.fixture(autouse=True)
def _close_consumer_connections() -> Iterator[None]:
    """The consumers' database threads give back their connections after each test.

    Channels' test communicators turn off the closing of connections that
    `database_sync_to_async` does after each call (so a test's own connection
    survives); the consumers' threads of their own would keep theirs open. One
    task per thread, held at a barrier so that each thread runs one, closes them.
    """
    yield
    import threading

    from django.db import connections

    from notifications.consumers import DB_THREADS, db_executor

    barrier = threading.Barrier(DB_THREADS)

    def close() -> None:
        connections.close_all()
        barrier.wait(timeout=10)

    for future in [db_executor.submit(close) for _ in range(DB_THREADS)]:
        future.result(timeout=15)


@pytest.fixture
def rules(db) -> list[AnomalyRule]:
    """The seed's anomaly rules (transactional tests flush the migration's rows)."""
    return [
        AnomalyRule.objects.update_or_create(
            metric=metric,
            defaults={"min_value": low, "max_value": high, "enabled": True},
        )[0]
        for metric, low, high in DEFAULT_RULES
    ]


@pytest.fixture
def user(db):
    return user_create()


@pytest.fixture
def other_user(db):
    return user_create()


@pytest.fixture
def api(user) -> APIClient:
    """An API client authenticated with the user's token."""
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}"
    )
    return client


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """The file ids handed to the broker (none is really sent)."""
    ids: list[int] = []
    monkeypatch.setattr(
        dispatch,
        "enqueue",
        lambda *, file_id, task_id, size: ids.append(file_id) or True,
    )
    return ids


@pytest.fixture
def in_memory_layer(settings) -> None:
    """A process-local channel layer for consumer tests that need no Redis."""
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    }


# --- the live stack ------------------------------------------------------------------


def database_url() -> str:
    """A URL for the test database, for processes started by the tests."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@dataclass
class LiveStack:
    """daphne and a Celery worker running against the test database."""

    base_url: str
    ws_url: str
    web: Process
    worker: Process
    worker_large: Process


def start_process(
    name: str, args: list[str], env: dict[str, str], logdir: Path
) -> Process:
    """Start a child in its own process group so it is stopped with all its children."""
    return processes.start(name, args, env=env, logdir=logdir)


def wait_for(
    predicate, *, timeout: float, what: str, process: Process | None = None
) -> None:
    """Poll `predicate`; RuntimeError if `process` exits first, TimeoutError after."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited:\n{process.output()[-4000:]}")
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def live_env(media_root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_DEBUG": "1",
        "DWELLFI_MEDIA_ROOT": str(media_root),
        "DWELLFI_PROGRESS_INTERVAL": "0.05",
        "PYTHONUNBUFFERED": "1",
    }


def start_worker(
    env: dict[str, str],
    logdir: Path,
    name: str = "worker",
    *,
    concurrency: int = 1,
    app: str = "dwellfi",
    queues: str = "celery,large",
) -> Process:
    """A worker of the default and the large-file queue, unless `queues` says."""
    return processes.start_worker(
        name,
        env=env,
        logdir=logdir,
        concurrency=concurrency,
        app=app,
        extra=("--pool", "prefork", "-Q", queues),
    )


def start_web(
    env: dict[str, str], logdir: Path, port: int, name: str = "web"
) -> Process:
    return processes.start_web(name, port, env=env, logdir=logdir)


def production_env(**extra: str) -> dict[str, str]:
    """This environment with production settings: DEBUG off, a key, allowed hosts."""
    return {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "dwellfi.example.com,127.0.0.1",
        **extra,
    }


def start_production_web(
    logdir: Path, media: Path, redis_url: str, *options: str, **settings_env: str
) -> tuple[Process, int]:
    """A daphne with production settings on the test database and a free port,
    its static files collected into logdir/static (pages need their manifest);
    `options` are daphne's, `settings_env` more of the environment."""
    env = {
        **production_env(),
        **live_env(media),
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "REDIS_URL": redis_url,
        "DWELLFI_STATIC_ROOT": str(logdir / "static"),
        **settings_env,
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=BASE_DIR,
        env=env,
        check=True,
        timeout=120,
    )
    port = free_port()
    web = processes.start(
        "web",
        processes.web_command(port, *options),
        env=env,
        logdir=logdir,
        ready=lambda _: processes.answers_http(port),
    )
    return web, port


@pytest.fixture(scope="session")
def live_stack(
    django_db_setup, django_db_blocker, tmp_path_factory
) -> Iterator[LiveStack]:
    """Real daphne and Celery worker processes for the whole session."""
    logdir = tmp_path_factory.mktemp("live")
    env = live_env(_session_media(tmp_path_factory))
    port = free_port()
    web = start_web(env, logdir, port)
    workers = []
    try:
        # The layout of `make run`: small files and large ones on workers of their own.
        workers.append(start_worker(env, logdir, queues="celery"))
        workers.append(start_worker(env, logdir, "worker-large", queues="large"))
    except Exception:
        for process in [web, *workers]:
            process.stop()
        raise
    yield LiveStack(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", web, *workers)
    for process in [*workers, web]:
        process.stop()


# --- private servers and process helpers for the fault-injection tests -------------


def child_pids(pid: int) -> list[int]:
    """The direct children of a process, from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return sorted(children)


class RedisServer:
    """A private redis-server on its own port that a test may kill and restart.

    Nothing is persisted (`--save "" --appendonly no`): a restart loses every queued
    message, like a crash of a Redis without persistence.
    """

    def __init__(self, logdir: Path, port: int | None = None) -> None:
        self.logdir = logdir
        self.port = port or free_port()
        self.process: Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        self.process = processes.start(
            f"redis-{self.port}-{self.starts}",
            redis_command(self.port),
            env=dict(os.environ),
            logdir=self.logdir,
            ready=lambda _: self.answers(),
        )

    def answers(self) -> bool:
        return answers_redis(self.port)

    def output(self) -> str:
        """The log of the current (or last) run."""
        return self.process.output() if self.process is not None else ""

    def kill(self) -> None:
        """A crash: SIGKILL, every message it held is gone."""
        if self.process is not None:
            self.process.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    """A private Redis for one test, killed (by its pid) when the test ends."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


class GroupListener:
    """Reads what the channel layer publishes to one user's group, straight from Redis.

    Lets a test watch a worker's live events (progress included) without a web
    process. Messages are msgpack, as RedisPubSubChannelLayer writes them.
    """

    def __init__(self, redis_url: str, user_id: int) -> None:
        import threading

        import msgpack
        import redis

        self.messages: list[dict] = []
        self._lock = threading.Lock()
        self._unpack = msgpack.unpackb
        self._pubsub = redis.Redis.from_url(redis_url).pubsub(
            ignore_subscribe_messages=True
        )
        self._pubsub.subscribe(**{f"asgi__group__user_{user_id}": self._handle})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.05, daemon=True)

    def _handle(self, raw) -> None:
        message = self._unpack(raw["data"])["message"]
        with self._lock:
            self.messages.append(message)

    def seen(self, predicate) -> bool:
        with self._lock:
            return any(predicate(message) for message in self.messages)

    def close(self) -> None:
        self._thread.stop()
        self._thread.join(timeout=5)
        self._pubsub.close()


class EventClient:
    """A client of `/notification/events` that reads in a background thread.

    Keeps every message it receives, in order; `closed` is set when the server
    closes the socket or the connection breaks.
    """

    def __init__(self, url: str) -> None:
        import threading

        self.messages: list[dict] = []
        self.opened = threading.Event()
        self.closed = threading.Event()
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        self.opened.wait(15)
        if self.error is not None or not self.opened.is_set():
            raise ConnectionError(f"cannot connect to {url}: {self.error}")

    def _read(self, url: str) -> None:
        import json

        from websockets.sync.client import connect

        try:
            with connect(url, open_timeout=10, max_size=None) as ws:
                self.ws = ws
                self.opened.set()
                for raw in ws:
                    with self._lock:
                        self.messages.append(json.loads(raw))
        except Exception as exc:  # a broken connection ends the reading like a close
            self.error = exc
        finally:
            self.closed.set()
            self.opened.set()

    def received(self) -> list[dict]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate, timeout: float) -> bool:
        """Whether `predicate(messages)` became true within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.received()):
                return True
            if self.closed.is_set():
                return predicate(self.received())
            time.sleep(0.05)
        return False

    def ping(self) -> None:
        self.ws.send('{"type": "ping"}')

    def close(self) -> None:
        self.ws.close()
        self._thread.join(timeout=5)


def final_statuses(messages: list[dict]) -> dict[int, str]:
    """Each file's status in the last durable event about it, by event id."""
    statuses: dict[int, tuple[int, str]] = {}
    for message in messages:
        file_id, event_id = message.get("file_id"), message.get("id")
        if file_id is None or event_id is None or "status" not in message:
            continue
        if file_id not in statuses or event_id > statuses[file_id][0]:
            statuses[file_id] = (event_id, message["status"])
    return {file_id: status for file_id, (_, status) in statuses.items()}


@pytest.fixture(autouse=True)
def _fresh_upload_throttle(settings) -> None:
    """Each test counts its uploads afresh.

    The throttle's history lives in the suite's Redis under the user's id, and ids
    repeat from test to test (SQLite reuses them, a new test database restarts
    them): without this a test could be refused for another test's uploads.
    """
    import uuid

    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "KEY_PREFIX": f"dwellfi-test-{uuid.uuid4().hex}",
        }
    }
