"""Races on purpose: requests that compete with a run, through real daphne and a worker.

The worker (`files.tests.holding`) stops every run at each batch boundary until the
test lets it go, so each competing request (a new version, a seed rename, a
reprocess, a delete) lands at an exact point of a run. Every test asserts the one
correct final state: the status, counts and stored results of the file's current
content, or nothing at all for a deleted file. PostgreSQL only: SQLite runs one
writing transaction at a time, so nothing there can overlap a run.
"""

import json
import math
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from rest_framework.authtoken.models import Token

from conftest import RedisServer, free_port, live_env, start_web, start_worker
from files.models import Anomaly, File, MetricRecord, PendingDeletion, RecordError
from notifications.models import Event

from .factories import expected_anomalies, metrics_bytes, user_create

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BATCH_SIZE = 10


@dataclass
class RaceStack:
    """daphne and a holding worker on a Redis of their own."""

    base_url: str
    hold_dir: Path

    def wait_held(self, file_id: int, generation: int, batch: int) -> float:
        """Let that run go through its earlier boundaries, then wait until it stops
        before batch `batch` + 1; when it did."""
        for earlier in range(1, batch):
            self._wait(file_id, generation, earlier)
            self.release(file_id, generation, earlier)
        return self._wait(file_id, generation, batch)

    def _wait(self, file_id: int, generation: int, batch: int) -> float:
        marker = self.hold_dir / f"held-{file_id}-{generation}-{batch}"
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, f"run never reached {marker.name}"
            time.sleep(0.005)
        return time.monotonic()

    def release(self, file_id: int, generation: int, batch: int) -> None:
        (self.hold_dir / f"go-{file_id}-{generation}-{batch}").touch()

    def run_free(self) -> None:
        (self.hold_dir / "run").touch()


@pytest.fixture(scope="module")
def race_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    if connection.vendor != "postgresql":
        pytest.skip("races need PostgreSQL: SQLite runs one writer at a time")
    logdir = tmp_path_factory.mktemp("races")
    hold_dir = logdir / "holds"
    hold_dir.mkdir()
    redis = RedisServer(logdir)
    redis.start()
    env = {
        **live_env(Path(settings.MEDIA_ROOT)),
        "REDIS_URL": redis.url,
        "DWELLFI_HOLD_DIR": str(hold_dir),
        "DWELLFI_TEST_BATCH_SIZE": str(BATCH_SIZE),
    }
    port = free_port()
    web = start_web(env, logdir, port, name="race-web")
    try:
        worker = start_worker(
            env, logdir, "race-worker", concurrency=2, app="files.tests.holding"
        )
    except Exception:
        web.stop()
        redis.kill()
        raise
    yield RaceStack(f"http://127.0.0.1:{port}", hold_dir)
    worker.stop()
    web.stop()
    redis.kill()


@pytest.fixture
def race(race_stack) -> Iterator[RaceStack]:
    """The stack with every run held again (a test may have let them run)."""
    (race_stack.hold_dir / "run").unlink(missing_ok=True)
    yield race_stack
    race_stack.run_free()  # nothing stays held for the next test


class Api:
    """The canonical and seed routes, as a client with a token calls them."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Token {token}"}, timeout=60
        )

    def upload(self, content: bytes, name: str = "metrics.json") -> dict:
        response = self.http.post(
            "/api/files/", files={"file": (name, content, "application/json")}
        )
        assert response.status_code == 201, response.text
        return response.json()

    def put(self, file_id: int, content: bytes, name: str) -> httpx.Response:
        return self.http.put(
            f"/api/files/{file_id}/",
            files={"file": (name, content, "application/json")},
        )

    def seed_rename(self, file_id: int, name: str) -> httpx.Response:
        form = json.dumps({"filename": name, "type": "server_sensor"})
        return self.http.put(
            f"/files/updatefile/{file_id}", data={"file_update_form": form}
        )

    def reprocess(self, file_id: int) -> httpx.Response:
        return self.http.post(f"/api/files/{file_id}/reprocess/")

    def delete(self, file_id: int) -> httpx.Response:
        return self.http.delete(f"/api/files/{file_id}/")

    def get(self, file_id: int) -> httpx.Response:
        return self.http.get(f"/api/files/{file_id}/")

    def wait_final(self, file_id: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            file = self.get(file_id).json()
            if file["status"] in ("processed", "failed"):
                return file
            assert time.monotonic() < deadline, f"file {file_id} stuck: {file}"
            time.sleep(0.05)


@pytest.fixture
def api(race, rules) -> Api:
    return Api(race.base_url, Token.objects.create(user=user_create()).key)


def assert_results_of(file_id: int, records: int) -> File:
    """The file is processed with exactly one set of results of `records` records."""
    file = File.objects.get(pk=file_id)
    assert file.status == "processed", file.error
    assert (file.record_count, file.anomaly_count) == (
        records,
        expected_anomalies(records),
    )
    stored = MetricRecord.objects.filter(file_id=file_id)
    assert sorted(stored.values_list("index", flat=True)) == list(range(records))
    assert Anomaly.objects.filter(file_id=file_id).count() == expected_anomalies(
        records
    )
    assert not RecordError.objects.filter(file_id=file_id).exists()
    last = Event.objects.filter(file_id=file_id, type="file.processed").last()
    assert last.message["file"]["generation"] == file.generation
    return file


def outcomes_of(file_id: int, generation: int) -> list[str]:
    """The outcome events a generation of the file recorded."""
    return [
        event.type
        for event in Event.objects.filter(
            file_id=file_id, type__in=["file.processed", "file.failed"]
        )
        if event.message["file"]["generation"] == generation
    ]


def assert_gone(file_id: int, timeout: float = 10) -> None:
    """Nothing of the file is left: row, results, events but its deletion, leftovers."""
    assert not File.objects.filter(pk=file_id).exists()
    deadline = time.monotonic() + timeout
    while PendingDeletion.objects.filter(file_id=file_id).exists():
        assert time.monotonic() < deadline, "the deleted file's results were not purged"
        time.sleep(0.05)
    for model in (MetricRecord, Anomaly, RecordError):
        assert not model.objects.filter(file_id=file_id).exists(), model
    types = Event.objects.filter(file_id=file_id).values_list("type", flat=True)
    assert list(types) == ["file.deleted"]


def stored_names() -> set[str]:
    uploads = Path(settings.MEDIA_ROOT) / "uploads"
    return {p.name for p in uploads.iterdir()} if uploads.exists() else set()


def test_a_new_version_put_mid_run_supersedes_it_at_the_next_batch(race, api):
    file = api.upload(metrics_bytes(60), "v1.json")
    race.wait_held(file["id"], 1, 2)

    response = api.put(file["id"], metrics_bytes(35), "v2.json")
    assert response.status_code == 200, response.text
    assert (response.json()["generation"], response.json()["status"]) == (2, "queued")
    released = time.monotonic()
    race.release(file["id"], 1, 2)

    # The superseded run stops at its next batch; the new one starts at once.
    started = race.wait_held(file["id"], 2, 1)
    assert started - released < 1.0
    assert not (race.hold_dir / f"held-{file['id']}-1-3").exists()
    race.run_free()
    final = api.wait_final(file["id"])
    assert final["name"] == "v2.json"
    assert assert_results_of(file["id"], 35).attempts == 1
    assert outcomes_of(file["id"], 1) == []


def test_a_seed_rename_mid_run_keeps_the_run_and_the_new_name(race, api):
    file = api.upload(metrics_bytes(40), "before.json")
    race.wait_held(file["id"], 1, 1)

    response = api.seed_rename(file["id"], "after.json")
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "after.json"
    race.run_free()

    final = api.wait_final(file["id"])
    assert (final["name"], final["generation"], final["attempts"]) == (
        "after.json",
        1,
        1,
    )
    assert_results_of(file["id"], 40)


def test_a_delete_mid_run_is_final(race, api):
    file = api.upload(metrics_bytes(40))
    race.wait_held(file["id"], 1, 2)
    content = File.objects.get(pk=file["id"]).content.name

    started = time.monotonic()
    response = api.delete(file["id"])
    assert response.status_code == 204
    assert time.monotonic() - started < 2  # it does not wait for the run
    assert api.get(file["id"]).status_code == 404
    race.release(file["id"], 1, 2)

    assert_gone(file["id"])
    assert not (Path(settings.MEDIA_ROOT) / content).exists()
    assert not (race.hold_dir / f"held-{file['id']}-1-3").exists()
    # The worker goes on with the next file.
    race.run_free()
    assert api.wait_final(api.upload(metrics_bytes(15))["id"])["status"] == "processed"


def slow_multipart(content: bytes, name: str, pause: threading.Event):
    """A multipart body sent in pieces, waiting for `pause` before its last piece."""
    boundary = "race-boundary"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=file; "
        f'filename="{name}"\r\nContent-Type: application/json\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head + content[: len(content) // 2]
        pause.wait(30)
        yield content[len(content) // 2 :] + tail

    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body()


def test_a_delete_while_a_put_still_sends_its_body_wins(race, api):
    race.run_free()
    file = api.upload(metrics_bytes(20))
    api.wait_final(file["id"])
    before = stored_names()
    finish_body = threading.Event()
    headers, body = slow_multipart(metrics_bytes(30), "v2.json", finish_body)

    with ThreadPoolExecutor(1) as pool:
        put = pool.submit(
            api.http.put, f"/api/files/{file['id']}/", headers=headers, content=body
        )
        time.sleep(0.3)  # the PUT's first half is on its way
        assert api.delete(file["id"]).status_code == 204
        finish_body.set()
        response = put.result(30)

    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}
    assert api.get(file["id"]).status_code == 404
    assert_gone(file["id"])
    assert stored_names() <= before  # the PUT stored nothing, the old bytes are gone


def test_twenty_concurrent_reprocess_requests_end_in_one_result(race, api):
    race.run_free()
    file = api.upload(metrics_bytes(30))
    api.wait_final(file["id"])

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: api.reprocess(file["id"]), range(20)))

    assert [r.status_code for r in responses] == [202] * 20
    assert api.wait_final(file["id"])["status"] == "processed"
    time.sleep(0.5)  # a last coalesced run may still be on its way
    assert_results_of(api.wait_final(file["id"])["id"], 30)


def test_puts_and_deletes_racing_each_other_never_resurrect(race, api):
    race.run_free()
    for _ in range(5):
        file = api.upload(metrics_bytes(20))
        with ThreadPoolExecutor(2) as pool:
            put = pool.submit(api.put, file["id"], metrics_bytes(25), "v2.json")
            delete = pool.submit(api.delete, file["id"])
            put_status, delete_status = put.result().status_code, delete.result()
        assert put_status in (200, 404)
        assert delete_status.status_code == 204
        time.sleep(0.3)
        assert api.get(file["id"]).status_code == 404
        assert_gone(file["id"])


@pytest.mark.parametrize("seed", range(8))
def test_any_request_at_any_batch_ends_in_the_one_correct_state(race, api, seed):
    """A random competing request at a random batch boundary, several times over."""
    chance = random.Random(seed)
    action = chance.choice(["put", "rename", "reprocess", "delete"])
    batch = chance.randint(1, 4)
    file = api.upload(metrics_bytes(50), "random.json")
    race.wait_held(file["id"], 1, batch)

    if action == "put":
        assert api.put(file["id"], metrics_bytes(33), "new.json").status_code == 200
    elif action == "rename":
        assert api.seed_rename(file["id"], "renamed.json").status_code == 200
    elif action == "reprocess":
        assert api.reprocess(file["id"]).status_code == 202
    else:
        assert api.delete(file["id"]).status_code == 204
    race.run_free()

    if action == "delete":
        assert_gone(file["id"])
        return
    final = api.wait_final(file["id"])
    records = 33 if action == "put" else 50
    assert_results_of(file["id"], records)
    if action in ("put", "reprocess"):
        assert outcomes_of(file["id"], 1) == []
    assert final["name"] == {"put": "new.json", "rename": "renamed.json"}.get(
        action, "random.json"
    )


EDGE_VALUES = [
    1e308,
    1.7976931348623157e308,
    -1e308,
    1e200,
    -1e200,
    5e-324,
    -0.0,
    2.2250738585072014e-308,
    1e308,
]


def edge_document() -> bytes:
    """Some metrics of every record at a numeric edge; one 1e400 record (invalid)."""
    records = [
        json.dumps(
            {
                "timestamp": f"2024-09-19T10:{i:02d}:00Z",
                "cpu_usage": value,
                "disk_read": value,
                "response_time": value,
            }
        )
        for i, value in enumerate(EDGE_VALUES)
    ]
    records.append('{"timestamp": "2024-09-19T11:00:00Z", "cpu_usage": 1e400}')
    return f'{{"server_id": "edge", "metrics": [{", ".join(records)}]}}'.encode()


def test_numbers_at_the_edges_are_processed_and_charted(race, api):
    race.run_free()
    file = api.wait_final(api.upload(edge_document(), "edges.json")["id"])

    assert file["status"] == "processed", file["error"]
    assert (file["record_count"], file["invalid_record_count"]) == (9, 1)
    stats = file["summary"]["metrics"]["cpu_usage"]
    assert all(math.isfinite(stats[key]) for key in ("min", "max", "mean"))
    # PostgreSQL's jsonb writes numbers out in full (309 digits here): same value.
    assert float(stats["max"]) == 1.7976931348623157e308
    errors = api.http.get(f"/api/files/{file['id']}/errors/").json()["results"]
    assert errors == [
        {
            "id": errors[0]["id"],
            "pointer": "/metrics/9/cpu_usage",
            "message": "cpu_usage must be a finite number",
        }
    ]
    for metric in ("cpu_usage", "response_time"):
        for points in (2, 3, 9):
            chart = api.http.get(
                f"/api/files/{file['id']}/metrics/",
                params={"metric": metric, "points": points},
            )
            assert chart.status_code == 200, chart.text
            means = [bucket["mean"] for bucket in chart.json()["series"]]
            assert means and all(math.isfinite(m) for m in means)
