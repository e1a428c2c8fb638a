"""Scale-out: two daphne processes and two Celery workers on one database and one
Redis broker, the channel layer sharded over two Redis servers.

Nothing is held by a process: a file uploaded through one web process is announced
on a WebSocket held by the other, the work spreads over both workers, and the
upload throttle counts across both web processes.
"""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from rest_framework.authtoken.models import Token

from conftest import (
    EventClient,
    Process,
    RedisServer,
    final_statuses,
    free_port,
    live_env,
    start_web,
    start_worker,
    wait_for,
)
from files.models import File

from .factories import metrics_bytes, server_4_bytes, user_create

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

FILES = 8
RATE = FILES + 2  # uploads a minute per user, across every web process


@pytest.fixture
def channel_shard(tmp_path):
    """A second Redis, for the channel layer only."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def start_together(*starts) -> list[Process]:
    """Start processes in parallel; if one fails, stop the others and raise."""
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = [pool.submit(*start) for start in starts]
    started, errors = [], []
    for future in futures:
        try:
            started.append(future.result())
        except Exception as exc:
            errors.append(exc)
    if errors:
        for process in started:
            process.stop()
        raise errors[0]
    return started


def test_two_webs_and_two_workers_share_everything(
    redis_server, channel_shard, rules, settings, tmp_path
):
    """Eight files uploaded through web A, concurrently, while a client listens on
    web B: the client gets every event of every file, in order; both workers
    processed some (each worker's log names the tasks it ran); and a user's
    uploads alternating between A and B are throttled at the shared rate."""
    env = {
        **live_env(settings.MEDIA_ROOT),
        "REDIS_URL": redis_server.url,
        "CHANNEL_REDIS_URLS": f"{redis_server.url},{channel_shard.url}",
        "DWELLFI_UPLOAD_RATE": f"{RATE}/min",
    }
    ports = {"a": free_port(), "b": free_port()}
    processes = start_together(
        (start_web, env, tmp_path, ports["a"], "web-a"),
        (start_web, env, tmp_path, ports["b"], "web-b"),
        (start_worker, env, tmp_path, "worker-a"),
        (start_worker, env, tmp_path, "worker-b"),
    )
    try:
        token = Token.objects.create(user=user_create()).key
        webs = {
            name: httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Token {token}"},
                timeout=30,
            )
            for name, port in ports.items()
        }
        # The socket is held by web B; every upload goes through web A.
        on_b = EventClient(
            f"ws://127.0.0.1:{ports['b']}/notification/events?token={token}&after=0"
        )
        content = metrics_bytes(20_000)
        uploaded: list[int] = []
        lock = threading.Lock()

        def upload(n: int) -> None:
            response = webs["a"].post(
                "/api/files/", files={"file": (f"f{n}.json", content)}
            )
            assert response.status_code == 201, response.text
            with lock:
                uploaded.append(response.json()["id"])

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(upload, range(FILES)))
        wait_for(
            lambda: all(File.objects.get(pk=pk).is_final for pk in uploaded),
            timeout=90,
            what="every file processed",
        )
        assert on_b.wait_for(
            lambda ms: final_statuses(ms) == dict.fromkeys(uploaded, "processed"),
            timeout=15,
        ), on_b.received()[-3:]
        ids = [m["id"] for m in on_b.received() if "id" in m]
        assert ids == list(range(1, len(ids) + 1))
        on_b.close()

        # The throttle's count is in Redis: each web process refuses the upload
        # after RATE in all, though it saw only half of them itself.
        other = Token.objects.create(user=user_create()).key
        for n in range(RATE):
            web = webs["ab"[n % 2]]
            response = web.post(
                "/api/files/",
                files={"file": (f"t{n}.json", server_4_bytes())},
                headers={"Authorization": f"Token {other}"},
            )
            assert response.status_code == 201, n
        for web in webs.values():
            throttled = web.post(
                "/api/files/",
                files={"file": ("over.json", server_4_bytes())},
                headers={"Authorization": f"Token {other}"},
            )
            assert throttled.status_code == 429
            assert int(throttled.headers["Retry-After"]) > 0
    finally:
        for process in processes:
            process.stop()

    # A file's task keeps no result row: each worker's log says what it ran.
    task_ids = File.objects.filter(pk__in=uploaded).values_list("task_id", flat=True)
    by_worker = {
        name: sum(
            f"process_file[{task_id}] succeeded in" in process.output()
            for task_id in task_ids
        )
        for name, process in zip("ab", processes[2:], strict=True)
    }
    logger.info(f"files processed per worker: {by_worker}")
    assert sum(by_worker.values()) == FILES
    assert all(by_worker.values())
