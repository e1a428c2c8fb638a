"""Load test: WebSocket clients of many users while files are uploaded concurrently.

Starts its own stack on loopback — a private redis-server, daphne and Celery
workers — on the database in DATABASE_URL (default: a fresh SQLite file in a
temporary folder), migrates it and creates the users. Then it holds `--clients`
WebSocket connections spread over `--users` users, uploads `--files` files over
HTTP (`--concurrency` at a time, spread over the users), and waits until every
client has seen every one of its user's files reach its outcome.

It checks that every client received exactly its own user's durable events —
ids 1..N without a gap or a duplicate, equal to `GET /api/events/` for that
user — and nothing about anyone else's files, with no HTTP or WebSocket error.
It prints the figures and exits 1 if any check failed.

    .venv/bin/python -m bench.load_ws        # 200 clients, 50 users, 500 files
    .venv/bin/python -m bench.load_ws --webs 2 --workers 2 --files 1000

With DATABASE_URL set it uses that database as is (make it a scratch one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets

from bench.stack import Stack, free_port, manage

OUTCOMES = {"file.processed", "file.failed"}
CREATE_USERS = """
import json
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
User = get_user_model()
tokens = []
for n in range({users}):
    user = User.objects.create_user(username=f"load-{run}-{{n}}")
    tokens.append([user.pk, Token.objects.create(user=user).key])
print("TOKENS " + json.dumps(tokens))
"""


# --- the load ----------------------------------------------------------------------


@dataclass
class Client:
    user_id: int
    token: str
    messages: list[dict] = field(default_factory=list)
    outcomes: dict[int, float] = field(default_factory=dict)  # file id -> when seen
    finished: set[int] = field(default_factory=set)  # files whose last event came
    error: str | None = None


def metrics_file(n: int) -> bytes:
    """A small metrics export (60 records), different for every file."""
    rows = [
        {
            "timestamp": f"2024-09-19T{10 + minute // 60:02d}:{minute % 60:02d}:00Z",
            "cpu_usage": (n * 7 + minute * 13) % 120,
            "memory_usage": (n + minute * 3) % 100,
            "disk_read": minute * 9 % 600,
            "disk_write": 100,
            "network_in": 200,
            "network_out": 300,
            "response_time": (n + minute) % 250,
        }
        for minute in range(60)
    ]
    return json.dumps({"server_id": f"load-{n}", "metrics": rows}).encode()


async def listen(client: Client, url: str, done) -> None:
    """Read until `done(client)`; a file's `notification` is its last event."""
    try:
        async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
            async for raw in ws:
                message = json.loads(raw)
                client.messages.append(message)
                if message["type"] in OUTCOMES:
                    client.outcomes.setdefault(message["file_id"], time.monotonic())
                elif message["type"] == "notification":
                    client.finished.add(message["file_id"])
                if done(client):
                    return
    except Exception as exc:  # counted as an error of this client
        client.error = f"{type(exc).__name__}: {exc}"


async def run_load(args, ports: list[int], tokens: list[tuple[int, str]]) -> int:
    clients = [Client(*tokens[n % len(tokens)]) for n in range(args.clients)]
    files_of: dict[int, set[int]] = {user_id: set() for user_id, _ in tokens}
    uploaded_at: dict[int, float] = {}
    all_uploaded = asyncio.Event()

    def done(client: Client) -> bool:
        return all_uploaded.is_set() and files_of[client.user_id] <= client.finished

    started = time.monotonic()
    listeners = [
        asyncio.create_task(
            listen(
                client,
                f"ws://127.0.0.1:{ports[n % len(ports)]}/notification/events"
                f"?token={client.token}&after=0",
                done,
            )
        )
        for n, client in enumerate(clients)
    ]
    await asyncio.sleep(1)  # let them connect
    connect_errors = [c.error for c in clients if c.error]

    limit = asyncio.Semaphore(args.concurrency)
    latencies: list[float] = []
    http_errors: list[str] = []
    async with httpx.AsyncClient(timeout=120) as http:

        async def upload(n: int) -> None:
            user_id, token = tokens[n % len(tokens)]
            base = f"http://127.0.0.1:{ports[n % len(ports)]}"
            async with limit:
                begin = time.monotonic()
                try:
                    response = await http.post(
                        f"{base}/api/files/",
                        headers={"Authorization": f"Token {token}"},
                        files={"file": (f"load-{n}.json", metrics_file(n))},
                    )
                except httpx.HTTPError as exc:
                    http_errors.append(f"upload {n}: {exc!r}")
                    return
                latencies.append(time.monotonic() - begin)
            if response.status_code != 201:
                http_errors.append(
                    f"upload {n}: {response.status_code} {response.text}"
                )
                return
            file_id = response.json()["id"]
            uploaded_at[file_id] = time.monotonic()
            files_of[user_id].add(file_id)

        upload_start = time.monotonic()
        await asyncio.gather(*(upload(n) for n in range(args.files)))
        upload_seconds = time.monotonic() - upload_start
        all_uploaded.set()

        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and not all(
            done(c) or c.error for c in clients
        ):
            await asyncio.sleep(0.2)
        processing_seconds = time.monotonic() - upload_start
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)

        stored: dict[int, list[int]] = {}
        for user_id, token in tokens:
            ids, url = (
                [],
                f"http://127.0.0.1:{ports[0]}/api/events/?after=0&page_size=500",
            )
            while url:
                page = (
                    await http.get(url, headers={"Authorization": f"Token {token}"})
                ).json()
                ids += [event["id"] for event in page["results"]]
                url = page["next"]
            stored[user_id] = ids

    failures = list(connect_errors) + http_errors
    delivered = 0
    for n, client in enumerate(clients):
        if client.error:
            failures.append(f"client {n}: {client.error}")
        durable = [m for m in client.messages if "id" in m]
        delivered += len(client.messages)
        ids = [m["id"] for m in durable]
        own = files_of[client.user_id]
        foreign = {m["file_id"] for m in client.messages if m["file_id"]} - own
        if foreign:
            failures.append(f"client {n}: events of other users' files {foreign}")
        if any(
            m.get("user_id", client.user_id) != client.user_id
            for m in client.messages
            if m["type"] == "notification"
        ):
            failures.append(f"client {n}: a notification for another user")
        if ids != stored[client.user_id][: len(ids)] or ids != list(
            range(1, len(ids) + 1)
        ):
            failures.append(f"client {n}: ids not 1..N: {ids[:10]}…")
        missing = own - client.finished
        if missing:
            failures.append(f"client {n}: no outcome for files {sorted(missing)[:5]}")
        if len(ids) != len(stored[client.user_id]):
            failures.append(
                f"client {n}: {len(ids)} events, the database has "
                f"{len(stored[client.user_id])}"
            )

    delays = [
        seen - uploaded_at[file_id]
        for client in clients
        for file_id, seen in client.outcomes.items()
        if file_id in uploaded_at
    ]
    uploaded = sum(len(ids) for ids in files_of.values())

    def q(values: list[float], fraction: float) -> str:
        if not values:
            return "-"
        ordered = sorted(values)
        return f"{ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]:.2f} s"

    print()
    print(
        f"stack: {len(ports)} daphne, {args.workers} worker(s) x concurrency "
        f"{args.worker_concurrency}, database {args.database_vendor}"
    )
    print(
        f"clients: {len(clients)} WebSockets of {len(tokens)} users, "
        f"connected for {time.monotonic() - started:.1f} s"
    )
    print(
        f"uploads: {uploaded}/{args.files} accepted in {upload_seconds:.1f} s "
        f"({uploaded / upload_seconds:.1f}/s, {args.concurrency} at a time); "
        f"latency p50 {q(latencies, 0.5)}, p95 {q(latencies, 0.95)}, "
        f"max {q(latencies, 1.0)}"
    )
    print(
        f"processing: every outcome on every socket {processing_seconds:.1f} s after "
        f"the first upload ({uploaded / processing_seconds:.1f} files/s end to end)"
    )
    print(
        f"upload accepted -> outcome on a socket: p50 {q(delays, 0.5)}, "
        f"p95 {q(delays, 0.95)}, max {q(delays, 1.0)}"
    )
    print(
        f"messages delivered: {delivered} ({delivered / len(clients):.0f} a client), "
        f"durable events stored: {sum(len(ids) for ids in stored.values())}"
    )
    if failures:
        print(f"FAILED: {len(failures)} problems")
        for failure in failures[:20]:
            print("  ", failure)
        return 1
    print(
        "OK: every client got exactly its own user's events, ids 1..N with no gap "
        "or duplicate, the same as the database; no errors"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50, help="uploads at once")
    parser.add_argument("--webs", type=int, default=1, help="daphne processes")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers")
    parser.add_argument("--worker-concurrency", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300, help="seconds")
    parser.add_argument("--keep", action="store_true", help="keep logs and data")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dwellfi-load-"))
    stack = Stack(tmp)
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{tmp / 'load.sqlite3'}"
    args.database_vendor = database_url.split(":", 1)[0]
    redis_port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "DJANGO_DEBUG": "1",
        "DJANGO_LOG_LEVEL": "WARNING",
        "DWELLFI_MEDIA_ROOT": str(tmp / "media"),
        "DWELLFI_UPLOAD_RATE": "100000/min",
        # Throughput, not the per-user limits, is what is measured here.
        "DWELLFI_QUOTA_FILES": "0",
        "DWELLFI_QUOTA_PROCESSING": "0",
        "DWELLFI_MAX_SOCKETS_PER_USER": "0",
        "PYTHONUNBUFFERED": "1",
    }
    try:
        stack.start_redis("redis", redis_port, env)
        manage(env, "migrate", "--noinput")
        script = CREATE_USERS.format(users=args.users, run=int(time.time()))
        output = manage(env, "shell", "-c", script)
        line = next(x for x in output.splitlines() if x.startswith("TOKENS "))
        tokens = [tuple(pair) for pair in json.loads(line.removeprefix("TOKENS "))]

        ports = [free_port() for _ in range(args.webs)]
        for n, port in enumerate(ports):
            stack.start_web(f"web-{n}", port, env)
        for n in range(args.workers):
            stack.start_worker(
                f"worker-{n}",
                {**env, "DJANGO_LOG_LEVEL": "INFO"},
                args.worker_concurrency,
            )
        return asyncio.run(run_load(args, ports, tokens))
    finally:
        stack.stop()
        if args.keep:
            print(f"logs and data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
