"""Fault injection with real processes: killed workers, restarted Redis and PostgreSQL.

Every test starts its own redis-server on a free port and its own Celery worker
(and daphne, and Celery beat, where it needs them) against the test database, and
kills only the processes it started, by pid. What each proves is in its docstring.
"""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from celery import current_app
from django.conf import settings
from rest_framework.authtoken.models import Token

from conftest import (
    EventClient,
    GroupListener,
    Process,
    child_pids,
    final_statuses,
    free_port,
    live_env,
    start_process,
    start_web,
    start_worker,
    wait_for,
)
from files import dispatch, services
from files.models import Anomaly, File, MetricRecord
from notifications.models import Event

from .factories import (
    expected_anomalies,
    metrics_bytes,
    server_4_bytes,
    upload,
    user_create,
)

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def fault_env(redis_server, settings) -> dict[str, str]:
    """The environment of processes a fault test starts: its own Redis."""
    return {
        **live_env(settings.MEDIA_ROOT),
        "REDIS_URL": redis_server.url,
        "DWELLFI_PROGRESS_INTERVAL": "0.05",
    }


@pytest.fixture
def owner(rules):
    return user_create()


def sender(broker_url: str):
    """`dispatch.enqueue`, sending to the given broker instead of the suite's."""

    def enqueue(*, file_id: int, task_id: str, size: int) -> bool:
        with current_app.connection_for_write(url=broker_url) as connection:
            current_app.send_task(
                dispatch.PROCESS_TASK,
                args=[file_id],
                task_id=task_id,
                connection=connection,
            )
        return True

    return enqueue


@pytest.fixture
def enqueue_to(monkeypatch):
    """Uploads made in this process send their task to the given broker."""

    def point_at(broker_url: str) -> None:
        monkeypatch.setattr(dispatch, "enqueue", sender(broker_url))

    return point_at


def wait_final(file_id: int, timeout: float, process=None) -> File:
    wait_for(
        lambda: File.objects.get(pk=file_id).is_final,
        timeout=timeout,
        what=f"file {file_id} final",
        process=process,
    )
    return File.objects.get(pk=file_id)


def event_types(file_id: int) -> list[str]:
    return list(
        Event.objects.filter(file_id=file_id)
        .order_by("seq")
        .values_list("type", flat=True)
    )


def assert_processed_once(file: File, records: int) -> None:
    """Exactly one set of results: every record once, the anomalies once."""
    assert file.status == "processed", file.error
    assert file.record_count == records
    stored = MetricRecord.objects.filter(file=file)
    assert stored.count() == records
    # Keyed by (file, index): a record stored twice could not be committed at all.
    assert stored.values("index").distinct().count() == records
    assert file.anomaly_count == Anomaly.objects.filter(file=file).count()
    assert file.anomaly_count == expected_anomalies(records)
    assert event_types(file.pk).count("file.processed") == 1


def progress_reached(listener: GroupListener, file_id: int, fraction: float):
    return lambda: listener.seen(
        lambda m: (
            m["type"] == "file.progress"
            and m["file_id"] == file_id
            and m["progress"] >= fraction
        )
    )


# --- the worker killed ------------------------------------------------------------


def test_killing_the_worker_child_mid_file_reprocesses_it_once(
    redis_server, fault_env, owner, enqueue_to, tmp_path
):
    """kill -9 of the pool process halfway through a 200,000-record file.

    The parent sees the child die and (reject_on_worker_lost) puts the message
    back; a new child processes the file again from scratch: it ends processed
    once, after two attempts, with exactly 200,000 records and no duplicates.
    """
    records = 200_000
    worker = start_worker(fault_env, tmp_path)
    listener = GroupListener(redis_server.url, owner.pk)
    try:
        enqueue_to(redis_server.url)
        started = time.monotonic()
        file = services.file_create(
            owner=owner, upload=upload(metrics_bytes(records), "big.json")
        )
        wait_for(
            progress_reached(listener, file.pk, 0.3),
            timeout=60,
            what="processing a third of the file",
            process=worker,
        )
        (child,) = child_pids(worker.popen.pid)
        os.kill(child, signal.SIGKILL)
        file = wait_final(file.pk, timeout=90, process=worker)
        logger.info(
            f"killed mid-file, processed after {time.monotonic() - started:.1f} s"
        )
    finally:
        listener.close()
        worker.stop()
    assert_processed_once(file, records)
    assert file.attempts == 2
    assert event_types(file.pk).count("file.processing") == 2
    assert "exited with 'signal 9 (SIGKILL)'" in worker.output()


def test_a_file_that_keeps_killing_its_worker_fails_after_the_last_attempt(
    redis_server, fault_env, owner, enqueue_to, tmp_path
):
    """DWELLFI_MAX_ATTEMPTS=2 and the pool child is killed in both attempts.

    Each kill sends the message back (reject_on_worker_lost), so without a count it
    would come back forever (celery#9082). The third delivery finds both attempts
    used and ends the file `failed` with the reason; nothing of it is stored.
    """
    worker = start_worker(
        {**fault_env, "DWELLFI_MAX_ATTEMPTS": "2"}, tmp_path, name="worker"
    )
    listener = GroupListener(redis_server.url, owner.pk)
    try:
        enqueue_to(redis_server.url)
        file = services.file_create(
            owner=owner, upload=upload(metrics_bytes(150_000), "killer.json")
        )
        for attempt in (1, 2):
            wait_for(
                lambda attempt=attempt: listener.seen(
                    lambda m: (
                        m["type"] == "file.progress"
                        and m["file_id"] == file.pk
                        and m["attempts"] == attempt
                    )
                ),
                timeout=60,
                what=f"attempt {attempt} under way",
                process=worker,
            )
            (child,) = child_pids(worker.popen.pid)
            os.kill(child, signal.SIGKILL)
        file = wait_final(file.pk, timeout=60, process=worker)
    finally:
        listener.close()
        worker.stop()
    assert file.status == "failed"
    assert file.error["message"].startswith("Gave up after 2 attempts")
    assert file.attempts == 2
    assert not MetricRecord.objects.filter(file=file).exists()
    assert event_types(file.pk) == [
        "file.queued",
        "file.processing",
        "file.processing",
        "file.failed",
        "notification",
    ]


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="holds a PostgreSQL row lock to stop the run where it is",
)
def test_killing_the_worker_in_a_one_transaction_run_counts_on_redelivery(
    redis_server, fault_env, owner, sent, tmp_path
):
    """kill -9 of the pool process in the middle of a small file's one-transaction run.

    The test holds the owner's event cursor row, which the run locks last, so the
    run is stopped inside its transaction with everything else done. Killed
    there, it committed nothing, its attempt included; the message comes back
    marked redelivered and the next run takes the two-transaction way, counting
    its attempt: processed once, after one counted attempt, its events once.
    """
    from django.db import connection

    worker = start_worker(fault_env, tmp_path)
    file = services.file_create(owner=owner, upload=upload(server_4_bytes()))
    params = connection.settings_dict
    holder = psycopg.connect(
        dbname=params["NAME"],
        user=params["USER"],
        host=params["HOST"],
        port=params["PORT"] or 5432,
    )
    try:
        holder.execute(
            "SELECT 1 FROM notifications_eventcursor WHERE user_id = %s FOR UPDATE",
            [owner.pk],
        )
        sender(redis_server.url)(file_id=file.pk, task_id=file.task_id, size=file.size)
        wait_for(
            lambda: waiting_for_the_event_cursor(connection),
            timeout=30,
            what="the run waiting for the event cursor",
            process=worker,
        )
        # Stopped in the one transaction, its records written: nothing committed.
        assert waiting_with_records_written(connection)
        assert File.objects.get(pk=file.pk).status == "queued"
        (child,) = child_pids(worker.popen.pid)
        os.kill(child, signal.SIGKILL)
    finally:
        holder.rollback()
        holder.close()
    try:
        file = wait_final(file.pk, timeout=60, process=worker)
    finally:
        worker.stop()
    assert file.status == "processed", file.error
    assert file.attempts == 1
    assert MetricRecord.objects.filter(file=file).count() == 9
    assert event_types(file.pk) == [
        "file.queued",
        "file.processing",
        "file.processed",
        "file.anomalies",
        "notification",
    ]
    assert "exited with 'signal 9 (SIGKILL)'" in worker.output()


def waiting_for_the_event_cursor(connection) -> bool:
    """Whether a session waits for a lock in a statement on the event cursor."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND query LIKE %s",
            ["%notifications_eventcursor%"],
        )
        return cursor.fetchone()[0] > 0


def waiting_with_records_written(connection) -> bool:
    """Whether the session waiting for the event cursor has written records."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity AS a "
            "JOIN pg_locks AS l ON l.pid = a.pid "
            "WHERE a.wait_event_type = 'Lock' AND a.query LIKE %s "
            "AND l.relation = 'files_metricrecord'::regclass "
            "AND l.mode = 'RowExclusiveLock'",
            ["%notifications_eventcursor%"],
        )
        return cursor.fetchone()[0] > 0


def short_limits(env: dict[str, str]) -> dict[str, str]:
    """Time limits and a visibility timeout short enough to wait for in a test."""
    return {
        **env,
        "DWELLFI_TASK_SOFT_TIME_LIMIT": "8",
        "DWELLFI_TASK_TIME_LIMIT": "9",
        "DWELLFI_VISIBILITY_TIMEOUT": "10",
    }


def test_killing_the_whole_worker_redelivers_to_a_new_worker(
    redis_server, fault_env, owner, enqueue_to, tmp_path
):
    """kill -9 of the worker and its child mid-file, then a new worker starts.

    Nobody is left to reject the message: it stays unacknowledged in Redis until
    the visibility timeout (10 s here, hard limit + 10 min in production) sends it
    back to the queue, and the new worker processes the file once.
    """
    records = 120_000
    env = short_limits(fault_env)
    first = start_worker(env, tmp_path, name="worker-a")
    listener = GroupListener(redis_server.url, owner.pk)
    try:
        enqueue_to(redis_server.url)
        file = services.file_create(
            owner=owner, upload=upload(metrics_bytes(records), "lost.json")
        )
        wait_for(
            progress_reached(listener, file.pk, 0.2),
            timeout=30,
            what="processing started",
            process=first,
        )
    finally:
        listener.close()
        first.stop(signal.SIGKILL)
    assert File.objects.get(pk=file.pk).status == "processing"
    killed_at = time.monotonic()
    second = start_worker(env, tmp_path, name="worker-b")
    try:
        file = wait_final(file.pk, timeout=40, process=second)
        logger.info(f"recovered {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        second.stop()
    assert_processed_once(file, records)
    assert file.attempts == 2


@pytest.mark.parametrize("target", ["main process", "process group"])
def test_sigterm_during_a_task_loses_nothing(
    redis_server, fault_env, owner, enqueue_to, tmp_path, target
):
    """SIGTERM while a file is half processed: finished, or requeued and finished.

    To the main process only (`docker stop`, `kill PID`): a warm shutdown, the task
    finishes first. To the whole group (systemd's default, Ctrl-C in a terminal):
    whatever the pool child does, the file is never lost — a worker started
    afterwards finishes it if the first did not.
    """
    records = 200_000
    worker = start_worker(fault_env, tmp_path)
    listener = GroupListener(redis_server.url, owner.pk)
    try:
        enqueue_to(redis_server.url)
        file = services.file_create(
            owner=owner, upload=upload(metrics_bytes(records), "term.json")
        )
        wait_for(
            progress_reached(listener, file.pk, 0.2),
            timeout=30,
            what="processing started",
            process=worker,
        )
        if target == "main process":
            os.kill(worker.popen.pid, signal.SIGTERM)
        else:
            os.killpg(worker.popen.pid, signal.SIGTERM)
        worker.popen.wait(60)
    finally:
        listener.close()
        worker.stop(signal.SIGKILL)
    status = File.objects.get(pk=file.pk).status
    logger.info(f"SIGTERM to the {target}: {status} when the worker exited")
    if target == "main process":
        assert status == "processed"
    if status != "processed":
        second = start_worker(fault_env, tmp_path, name="worker-2")
        try:
            wait_final(file.pk, timeout=60, process=second)
        finally:
            second.stop()
    assert_processed_once(File.objects.get(pk=file.pk), records)


# --- Redis down or restarted ---------------------------------------------------------


def start_beat(env: dict[str, str], logdir) -> Process:
    beat = start_process(
        "beat",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dwellfi",
            "beat",
            "-l",
            "info",
            "-s",
            str(logdir / "celerybeat-schedule"),
        ],
        env,
        logdir,
    )
    wait_for(
        lambda: "beat: Starting" in beat.output(), timeout=30, what="beat", process=beat
    )
    return beat


def recovering(env: dict[str, str]) -> dict[str, str]:
    """The recovery job every second, re-enqueueing files queued for 3 s."""
    return {
        **env,
        "DWELLFI_SWEEP_SECONDS": "1",
        "DWELLFI_QUEUED_GRACE_SECONDS": "3",
    }


class Api:
    """The HTTP API of a web process, as one user."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Token {token}"}, timeout=30
        )

    def upload(self, content: bytes, name: str) -> httpx.Response:
        return self.client.post(
            "/api/files/", files={"file": (name, content, "application/json")}
        )

    def status(self, file_id: int) -> str:
        return self.client.get(f"/api/files/{file_id}/").json()["status"]


class Blackhole:
    """A port that accepts no connection and refuses none: connects hang.

    Its listen backlog is filled at once, so the kernel drops every further SYN,
    as it happens when the host behind an address is gone.
    """

    def __init__(self, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(0)
        self.fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            self.fillers.append(filler)

    def close(self) -> None:
        for sock in (*self.fillers, self.listener):
            sock.close()


def test_uploads_with_redis_unreachable_return_at_once_and_are_recovered(
    redis_server, fault_env, owner, tmp_path
):
    """The broker is down at upload: 201 within seconds, the row stays queued.

    First Redis is stopped (connections refused), then its address stops answering
    (connects hang, as when its host is gone). Either way the upload request
    returns promptly — the short Redis timeouts in settings bound the enqueue, the
    live event and the throttle (which fails open) — with the row `queued`. When
    Redis is back, the recovery job run by beat enqueues both and they end processed.
    """
    env = recovering(fault_env)
    port = free_port()
    web = start_web(env, tmp_path, port)
    worker = start_worker(env, tmp_path)
    beat = start_beat(env, tmp_path)
    api = Api(f"http://127.0.0.1:{port}", Token.objects.create(user=owner).key)
    blackhole = None
    try:
        redis_server.kill()
        timings = {}
        uploaded = []
        for case in ("refused", "unreachable"):
            if case == "unreachable":
                blackhole = Blackhole(redis_server.port)
            started = time.monotonic()
            response = api.upload(server_4_bytes(), f"{case}.json")
            timings[case] = time.monotonic() - started
            assert response.status_code == 201, response.text
            assert response.json()["status"] == "queued"
            uploaded.append(response.json()["id"])
        logger.info(
            "upload with Redis down:", {k: f"{v:.2f} s" for k, v in timings.items()}
        )
        assert timings["refused"] < 2
        assert timings["unreachable"] < 6
        assert {File.objects.get(pk=pk).status for pk in uploaded} == {"queued"}

        blackhole.close()
        blackhole = None
        redis_server.start()
        back = time.monotonic()
        for file_id in uploaded:
            wait_for(
                lambda file_id=file_id: File.objects.get(pk=file_id).is_final,
                timeout=60,
                what="recovery",
                process=worker,
            )
        logger.info(
            f"both processed {time.monotonic() - back:.1f} s after Redis came back"
        )
    finally:
        if blackhole is not None:
            blackhole.close()
        for process in (beat, worker, web):
            process.stop()
    for file_id in uploaded:
        file = File.objects.get(pk=file_id)
        assert (file.status, file.record_count, file.anomaly_count) == (
            "processed",
            9,
            27,
        )
    assert "recover_stuck_files" in beat.output()


def test_redis_restarted_mid_run_loses_no_file_and_no_event(
    redis_server, fault_env, owner, tmp_path
):
    """Redis crashes (kill -9, nothing persisted) and restarts while files are in
    flight and a WebSocket client is connected.

    Queued messages and live events die with it. Web, worker and beat reconnect;
    files uploaded afterwards are processed; files whose message was lost are
    enqueued again by the recovery job. The client that stayed connected, plus one
    reconnect with `?after=` its last id, ends with every event exactly once, in
    order, and every file's final status.
    """
    env = recovering(fault_env)
    port = free_port()
    web = start_web(env, tmp_path, port)
    worker = start_worker(env, tmp_path)
    beat = start_beat(env, tmp_path)
    token = Token.objects.create(user=owner).key
    api = Api(f"http://127.0.0.1:{port}", token)
    ws_url = f"ws://127.0.0.1:{port}/notification/events?token={token}"
    client = EventClient(f"{ws_url}&after=0")
    uploaded = []
    try:
        for n in range(4):
            uploaded.append(
                api.upload(server_4_bytes(), f"before-{n}.json").json()["id"]
            )
        # Last and large (about 1.5 s of processing on PostgreSQL): surely still in
        # flight when Redis dies just after its upload.
        uploaded.append(
            api.upload(metrics_bytes(150_000), "inflight.json").json()["id"]
        )
        in_flight = File.objects.filter(
            pk__in=uploaded, status__in=["queued", "processing"]
        )
        assert in_flight.exists()
        redis_server.restart()
        for n in range(5):
            response = api.upload(server_4_bytes(), f"after-{n}.json")
            assert response.status_code == 201, response.text
            uploaded.append(response.json()["id"])
        for file_id in uploaded:
            wait_for(
                lambda file_id=file_id: File.objects.get(pk=file_id).is_final,
                timeout=60,
                what=f"file {file_id} final",
                process=worker,
            )
        last_id = Event.objects.filter(user=owner).order_by("-seq").first().seq
        # A ping makes the consumer look for events the channel layer dropped.
        if not client.closed.is_set():
            client.ping()
            client.wait_for(lambda ms: any(m["type"] == "pong" for m in ms), timeout=10)
        live = client.received()
        stayed_open = not client.closed.is_set()
        client.close()
        seen = max((m["id"] for m in live if "id" in m), default=0)
        late = EventClient(f"{ws_url}&after={seen}")
        late.ping()
        late.wait_for(lambda ms: any(m["type"] == "pong" for m in ms), timeout=10)
        late.close()
    finally:
        for process in (beat, worker, web):
            process.stop()
    durable = [m for m in live + late.received() if "id" in m]
    ids = [m["id"] for m in durable]
    logger.info(
        f"{len(ids)} events: {len([m for m in live if 'id' in m])} on the first "
        f"socket (open through the restart: {stayed_open}), "
        f"{len(late.received()) - 1} after reconnecting"
    )
    assert ids == list(range(1, last_id + 1))
    expected = {pk: File.objects.get(pk=pk).status for pk in uploaded}
    assert set(expected.values()) == {"processed"}
    assert final_statuses(durable) == expected


# --- PostgreSQL restarted ------------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")
NEW_USER = (
    "from files.tests.factories import user_create\n"
    "from rest_framework.authtoken.models import Token\n"
    "user = user_create()\n"
    "print('USER', user.pk, Token.objects.create(user=user).key)\n"
)


class PostgresCluster:
    """A private PostgreSQL 15 cluster on its own port, run as the postgres user."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: the postgres user cannot enter root's 0700 tree.
        self.dir = Path(tempfile.mkdtemp(prefix="dwellfi-pg-"))
        shutil.chown(self.dir, "postgres")
        self.port = free_port()
        self._as_postgres(
            PG_BIN / "initdb",
            "-D",
            self.dir / "data",
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )

    def _as_postgres(self, *args) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, args)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def _pg_ctl(self, *args) -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-w", *args)

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._pg_ctl("-o", options, "-l", self.dir / "log", "start")

    def crash(self) -> None:
        """`stop -m immediate`: every backend dies at once, recovery on next start."""
        self._pg_ctl("-m", "immediate", "stop")

    def execute(self, database: str, sql: str, *params) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def destroy(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres_cluster():
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        pytest.skip("the suite runs on SQLite (DATABASE_URL unset)")
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_postgresql_restarted_between_and_during_tasks(
    postgres_cluster, redis_server, fault_env, tmp_path
):
    """PostgreSQL crashes (`pg_ctl stop -m immediate`) and restarts, twice.

    Between tasks: web and worker hold pooled connections that are now dead; the
    health check on reuse replaces them and the next upload is processed. During
    a task (a third into a 100,000-record file): the transaction dies with the
    server, the task retries with backoff until PostgreSQL is back, and the file
    ends processed once — every record exactly once.
    """
    cluster = postgres_cluster
    cluster.execute("postgres", "CREATE DATABASE dwellfi")
    env = {**fault_env, "DATABASE_URL": cluster.url("dwellfi")}
    manage(env, "migrate", "--noinput")
    user_line = next(
        line
        for line in manage(env, "shell", "-c", NEW_USER).splitlines()
        if line.startswith("USER ")
    )
    _, user_id, token = user_line.split()
    port = free_port()
    web = start_web(env, tmp_path, port)
    worker = start_worker(env, tmp_path)
    api = Api(f"http://127.0.0.1:{port}", token)
    listener = GroupListener(redis_server.url, int(user_id))

    def final(file_id: int, timeout: float = 60) -> str:
        def done() -> bool:
            try:
                return api.status(file_id) in ("processed", "failed")
            except (httpx.HTTPError, KeyError, ValueError):
                return False  # the database is still coming back

        wait_for(done, timeout=timeout, what=f"file {file_id}", process=worker)
        return api.status(file_id)

    try:
        first = api.upload(server_4_bytes(), "first.json").json()["id"]
        assert final(first) == "processed"

        cluster.crash()
        cluster.start()
        second = api.upload(server_4_bytes(), "second.json")
        assert second.status_code == 201, second.text
        assert final(second.json()["id"]) == "processed"

        records = 200_000
        big = api.upload(metrics_bytes(records), "big.json").json()["id"]
        wait_for(
            progress_reached(listener, big, 0.3),
            timeout=60,
            what="processing a third of the file",
            process=worker,
        )
        cluster.crash()
        time.sleep(1)
        cluster.start()
        assert final(big, timeout=90) == "processed"
    finally:
        listener.close()
        worker.stop()
        web.stop()
    count, distinct = cluster.execute(
        "dwellfi",
        "SELECT count(*), count(DISTINCT index) FROM files_metricrecord "
        "WHERE file_id = %s",
        big,
    )[0]
    assert count == distinct == records
    attempts, record_count, anomaly_count = cluster.execute(
        "dwellfi",
        "SELECT attempts, record_count, anomaly_count FROM files_file WHERE id = %s",
        big,
    )[0]
    assert record_count == records
    assert anomaly_count == expected_anomalies(records)
    assert attempts >= 2
    logger.info(f"attempts for the file whose database crashed: {attempts}")


def test_a_file_locked_by_a_lingering_session_waits_for_it(
    redis_server, fault_env, owner, sent, tmp_path
):
    """A killed worker's database session can outlive it and keep the file's
    processing lock (until TCP keepalive ends it). The task then neither runs
    twice at once nor gives up: it retries with backoff, counting no attempt,
    and processes the file once the session is gone.
    """
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        pytest.skip("the processing lock is a PostgreSQL advisory lock")
    import psycopg

    from conftest import database_url

    file = services.file_create(owner=owner, upload=upload(server_4_bytes()))
    worker = start_worker(fault_env, tmp_path)
    lingering = psycopg.connect(database_url())
    try:
        lingering.execute("SELECT pg_advisory_lock(%s, %s)", (0x0DF1, file.pk))
        sender(redis_server.url)(file_id=file.pk, task_id=file.task_id, size=file.size)
        wait_for(
            lambda: "transient error, retry in 2s" in worker.output(),
            timeout=30,
            what="two refused tries",
            process=worker,
        )
        assert File.objects.get(pk=file.pk).status == "queued"
        lingering.close()
        file = wait_final(file.pk, timeout=30, process=worker)
    finally:
        lingering.close()
        worker.stop()
    assert file.status == "processed"
    assert file.attempts == 1


def test_settings_refuse_a_visibility_timeout_not_above_the_time_limit():
    """A visibility timeout at or under the hard time limit would hand a long task
    to a second worker while the first still runs (celery#5306): refused at start."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DWELLFI_VISIBILITY_TIMEOUT": "1800"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "DWELLFI_VISIBILITY_TIMEOUT must hold" in result.stderr
