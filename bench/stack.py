"""The processes a benchmark starts on loopback, by name (on dwellfi.processes)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dwellfi.processes import (
    BASE_DIR,
    Process,
    answers_redis,
    free_port,
    redis_command,
    start,
    start_web,
    start_worker,
)

__all__ = ["BASE_DIR", "Stack", "answers_redis", "free_port", "manage"]


class Stack:
    """The processes a script starts, by name; each leads its own process group."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: dict[str, Process] = {}

    def start(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        ready: Callable[[Process], bool] = lambda process: True,
    ) -> Process:
        self.children[name] = start(
            name, args, env=env, logdir=self.logdir, ready=ready
        )
        return self.children[name]

    def start_redis(self, name: str, port: int, env: dict[str, str]) -> Process:
        return self.start(
            name, redis_command(port), env, ready=lambda _: answers_redis(port)
        )

    def start_web(self, name: str, port: int, env: dict[str, str]) -> Process:
        self.children[name] = start_web(name, port, env=env, logdir=self.logdir)
        return self.children[name]

    def start_worker(
        self, name: str, env: dict[str, str], concurrency: int, *extra: str
    ) -> Process:
        self.children[name] = start_worker(
            name,
            env=env,
            logdir=self.logdir,
            concurrency=concurrency,
            extra=extra,
        )
        return self.children[name]

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def stop(self, *names: str) -> None:
        """Stop each (all, or those named): SIGTERM, then SIGKILL what is left."""
        for name in [n for n in self.children if not names or n in names]:
            self.children.pop(name).stop()


def manage(env: dict[str, str], *args: str) -> str:
    """Run a manage.py command; its output (RuntimeError with stderr if it fails)."""
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
