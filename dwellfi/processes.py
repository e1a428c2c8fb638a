"""The processes that tests, benchmarks and `make test` start, on mirakuru.

One place for the commands (daphne, a Celery worker, redis-server, as production
runs them), for waiting until a process answers, and for stopping it with every
child of its process group. `make run` does not use this: its processes are the
Procfile's, run by honcho.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from mirakuru import Executor
from mirakuru.base import ENV_UUID
from mirakuru.exceptions import ProcessExitedWithError, TimeoutExpired

BASE_DIR = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def web_command(port: int, *options: str) -> list[str]:
    """daphne serving DwellFi, as in production (`options`: daphne's, e.g. behind
    a proxy `--proxy-headers`)."""
    return [
        *(sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)),
        *options,
        "dwellfi.asgi:application",
    ]


def worker_command(
    name: str, concurrency: int, *extra: str, app: str = "dwellfi"
) -> list[str]:
    """A Celery worker with a node name of its own, as in production."""
    return [
        *(sys.executable, "-m", "celery", "-A", app, "worker", "-l", "info"),
        *("--concurrency", str(concurrency), "-n", f"{name}-{os.getpid()}@%h"),
        *("--without-gossip", "--without-mingle", *extra),
    ]


def redis_command(port: int, binary: str = "redis-server") -> list[str]:
    """A Redis that keeps nothing on disk, on 127.0.0.1:`port`."""
    return [binary, "--bind", "127.0.0.1", "--port", str(port)] + [
        *("--save", "", "--appendonly", "no"),
    ]


def answers_http(port: int) -> bool:
    """Whether DwellFi's health check on `port` answers 200."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def accepts_tcp(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def answers_redis(port: int) -> bool:
    """Whether a Redis on `port` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Process(Executor):
    """A child leading its own process group, its output in a log file.

    `start()` returns once `ready(process)` is true, and raises RuntimeError (with
    the end of the log) if the child exits first or is not ready within
    START_TIMEOUT seconds. `stop()` signals the whole group, waits, then SIGKILLs
    whatever is left of it. `popen` stays available after the child has stopped.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        env: dict[str, str],
        log: Path,
        ready: Callable[[Process], bool] = lambda process: True,
    ) -> None:
        self.name = name
        self.log = log
        self.popen: subprocess.Popen | None = None
        self._ready = ready
        super().__init__(
            command,
            cwd=str(BASE_DIR),
            timeout=START_TIMEOUT,
            envvars=env,
            stdin=subprocess.DEVNULL,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def start(self) -> Process:
        try:
            super().start()
        except (ProcessExitedWithError, TimeoutExpired) as exc:
            raise RuntimeError(
                f"{self.name} did not start ({exc}):\n{self.output()[-4000:]}"
            ) from exc
        self.popen = self.process
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def envvars(self) -> dict[str, str]:
        """Exactly the environment given (mirakuru's own adds os.environ): a test
        must be able to leave a variable out. Plus mirakuru's marker of its
        children."""
        return {**self._envvars, ENV_UUID: self._uuid}

    def pre_start_check(self) -> bool:
        return False  # ports are fresh: nothing of ours can be running there

    def after_start_check(self) -> bool:
        return self._ready(self)

    def output(self) -> str:
        """Everything the child wrote so far."""
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Send `sig` to the group, wait up to `timeout` s, SIGKILL what is left."""
        popen = self.popen
        if popen is None:
            return
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)  # a pool child left behind
        popen.wait(5)
        self._clear_process()


def start(
    name: str,
    command: list[str],
    *,
    env: dict[str, str],
    logdir: Path,
    ready: Callable[[Process], bool] = lambda process: True,
) -> Process:
    """Start a child and wait until `ready(child)`; its log is `logdir/name.log`."""
    return Process(
        name, command, env=env, log=logdir / f"{name}.log", ready=ready
    ).start()


def start_web(name: str, port: int, *, env: dict[str, str], logdir: Path) -> Process:
    """daphne on `port`, once its health check answers."""
    return start(
        name,
        web_command(port),
        env=env,
        logdir=logdir,
        ready=lambda _: answers_http(port),
    )


def start_worker(
    name: str,
    *,
    env: dict[str, str],
    logdir: Path,
    concurrency: int = 1,
    app: str = "dwellfi",
    extra: tuple[str, ...] = ("--pool", "prefork"),
) -> Process:
    """A Celery worker, once it is consuming (it logs "<node> ready.")."""
    return start(
        name,
        worker_command(name, concurrency, *extra, app=app),
        env=env,
        logdir=logdir,
        ready=lambda worker: "ready." in worker.output(),
    )


def start_redis(
    name: str,
    *,
    logdir: Path,
    port: int | None = None,
    binary: str = "redis-server",
    env: dict[str, str] | None = None,
) -> tuple[Process, int]:
    """A private redis-server; it and its port."""
    port = port or free_port()
    redis = start(
        name,
        redis_command(port, binary),
        env=env or {},
        logdir=logdir,
        ready=lambda _: answers_redis(port),
    )
    return redis, port
