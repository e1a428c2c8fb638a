"""The processes a benchmark starts on loopback, and how to tell they are ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def web_command(port: int, *options: str) -> list[str]:
    """daphne serving DwellFi, as in production (`options`: daphne's, e.g. behind
    a proxy `--proxy-headers`)."""
    return [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        *options,
        "dwellfi.asgi:application",
    ]


def worker_command(
    name: str, concurrency: int, *extra: str, app: str = "dwellfi"
) -> list[str]:
    """A Celery worker with a node name of its own, as in production."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-l",
        "info",
        "--concurrency",
        str(concurrency),
        "-n",
        f"{name}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        *extra,
    ]


class Stack:
    """The processes a script starts; each leads its own process group."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]):
        log = (self.logdir / f"{name}.log").open("wb")
        popen = subprocess.Popen(
            args,
            cwd=BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children[name] = popen
        return popen

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def wait_for(
        self, name: str, ready: Callable[[], bool], timeout: float = 60
    ) -> None:
        popen = self.children[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log(name)[-3000:]}")
            if ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{name} not ready after {timeout} s")

    def start_web(self, name: str, port: int, env: dict[str, str]) -> None:
        self.start(name, web_command(port), env)
        self.wait_for(name, lambda: answers_http(port))

    def start_worker(
        self, name: str, env: dict[str, str], concurrency: int, *extra: str
    ) -> subprocess.Popen:
        popen = self.start(name, worker_command(name, concurrency, *extra), env)
        self.wait_for(name, lambda: "ready." in self.log(name))
        return popen

    def stop(self, *names: str) -> None:
        """SIGTERM to each group (all, or those named), then SIGKILL what is left."""
        chosen = [
            (name, popen)
            for name, popen in self.children.items()
            if not names or name in names
        ]
        for _, popen in chosen:
            if popen.poll() is None:
                os.killpg(popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, popen in chosen:
            try:
                popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
            del self.children[name]


def answers_http(port: int) -> bool:
    try:
        return (
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        )
    except httpx.HTTPError:
        return False


def answers_redis(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return result.stdout
