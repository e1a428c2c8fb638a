"""Shared fixtures: users, API clients, anomaly rules, and the live stack.

The live stack starts real processes (daphne and a Celery worker) against the test
database and the configured Redis, for the end-to-end tests.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from files.models import AnomalyRule
from files.tests.factories import user_create

BASE_DIR = Path(__file__).resolve().parent
DEFAULT_RULES = {
    "cpu_usage": (0, 85),
    "memory_usage": (0, 90),
    "disk_read": (0, 500),
    "disk_write": (0, 1000),
    "network_in": (0, 1000),
    "network_out": (0, 1000),
    "response_time": (0, 200),
}


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


@pytest.fixture
def rules(db) -> list[AnomalyRule]:
    """The seed's anomaly rules (transactional tests flush the migration's rows)."""
    return [
        AnomalyRule.objects.update_or_create(
            metric=metric,
            defaults={"min_value": low, "max_value": high, "enabled": True},
        )[0]
        for metric, (low, high) in DEFAULT_RULES.items()
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
def in_memory_layer(settings) -> None:
    """A process-local channel layer for consumer tests that need no Redis."""
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    }


# --- the live stack ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
class Process:
    """A child process the tests started, with its log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


@dataclass
class LiveStack:
    """daphne and a Celery worker running against the test database."""

    base_url: str
    ws_url: str
    web: Process
    worker: Process


def start_process(
    name: str, args: list[str], env: dict[str, str], logdir: Path
) -> Process:
    """Start a child in its own process group so it is stopped with all its children."""
    log = logdir / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(
        args,
        cwd=BASE_DIR,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Process(name, popen, log)


def wait_for(
    predicate, *, timeout: float, what: str, process: Process | None = None
) -> None:
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


def start_worker(env: dict[str, str], logdir: Path, name: str = "worker") -> Process:
    worker = start_process(
        name,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dwellfi",
            "worker",
            "-l",
            "info",
            "--concurrency",
            "1",
            "--pool",
            "prefork",
            "-n",
            f"{name}-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        env,
        logdir,
    )
    wait_for(lambda: "ready." in worker.output(), timeout=60, what=name, process=worker)
    return worker


def start_web(
    env: dict[str, str], logdir: Path, port: int, name: str = "web"
) -> Process:
    web = start_process(
        name,
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "dwellfi.asgi:application",
        ],
        env,
        logdir,
    )

    def healthy() -> bool:
        try:
            return (
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=60, what=name, process=web)
    return web


@pytest.fixture(scope="session")
def live_stack(
    django_db_setup, django_db_blocker, tmp_path_factory
) -> Iterator[LiveStack]:
    """Real daphne and Celery worker processes for the whole session."""
    logdir = tmp_path_factory.mktemp("live")
    env = live_env(_session_media(tmp_path_factory))
    port = free_port()
    web = start_web(env, logdir, port)
    try:
        worker = start_worker(env, logdir)
    except Exception:
        web.stop()
        raise
    yield LiveStack(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", web, worker)
    worker.stop()
    web.stop()
