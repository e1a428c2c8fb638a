"""Structured logs: one upload followed from the web request to the worker by its id."""

import json
import logging
import sys
import time

import httpx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token

from dwellfi.logging import (
    ContextFilter,
    JsonFormatter,
    _send_request_id,
    request_id_var,
)
from files import services
from files.models import File
from files.tasks import process_file

from .factories import server_4_bytes, upload, user_create


@pytest.fixture
def logs(caplog) -> pytest.LogCaptureFixture:
    """caplog, with records stamped as the console handler stamps them."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(ContextFilter())
    return caplog


def records(caplog, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


@pytest.fixture
def no_broker(monkeypatch) -> None:
    monkeypatch.setattr(services, "enqueue", lambda *, file_id, task_id: True)


def post_file(api, **headers):
    return api.post(
        "/api/files/",
        {"file": SimpleUploadedFile("server_4.json", server_4_bytes())},
        format="multipart",
        **headers,
    )


@pytest.mark.django_db
def test_an_upload_logs_its_file_with_the_callers_request_id(api, logs, no_broker):
    response = post_file(api, HTTP_X_REQUEST_ID="req-upload-1")
    assert response.status_code == 201
    assert response["X-Request-ID"] == "req-upload-1"
    [line] = records(logs, "file uploaded")
    file = File.objects.get()
    assert line.request_id == "req-upload-1"
    assert (line.file_id, line.size, line.task_id) == (file.pk, file.size, file.task_id)


@pytest.mark.django_db
def test_a_request_without_an_id_gets_one(api, logs, no_broker):
    response = post_file(api)
    generated = response["X-Request-ID"]
    assert len(generated) == 32
    assert records(logs, "file uploaded")[0].request_id == generated
    # Two requests, two ids.
    assert api.get("/api/files/")["X-Request-ID"] != generated


@pytest.mark.django_db
def test_djangos_own_lines_about_failed_requests_carry_the_id(api, logs):
    response = api.get("/api/files/999999/", HTTP_X_REQUEST_ID="req-404")
    assert response.status_code == 404
    [line] = [r for r in logs.records if r.name == "django.request"]
    assert line.request_id == "req-404"


@pytest.mark.django_db
@pytest.mark.parametrize("sent", ["", "x" * 129, "bad id", 'a"b', "a\nb"])
def test_an_unusable_request_id_is_replaced(client, sent):
    response = client.get("/healthz", HTTP_X_REQUEST_ID=sent)
    assert response["X-Request-ID"] != sent and len(response["X-Request-ID"]) == 32


def test_every_record_is_one_line_of_json_with_ids_and_extras():
    record = logging.LogRecord(
        "files.x", logging.ERROR, __file__, 1, "failed %s", ("twice",), None
    )
    record.size = 12
    token = request_id_var.set("req-json")
    try:
        ContextFilter().filter(record)
    finally:
        request_id_var.reset(token)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed twice" and entry["level"] == "ERROR"
    assert entry["request_id"] == "req-json" and entry["size"] == 12
    assert entry["task_id"] is None and entry["file_id"] is None
    assert "ValueError: boom" in entry["exception"]


def test_a_task_sent_during_a_request_carries_its_id():
    headers: dict = {}
    token = request_id_var.set("req-send")
    try:
        _send_request_id(headers=headers)
    finally:
        request_id_var.reset(token)
    assert headers == {"request_id": "req-send"}
    untouched: dict = {}
    _send_request_id(headers=untouched)
    assert untouched == {}


@pytest.mark.django_db
def test_the_task_logs_carry_the_request_id_from_its_headers(
    user, rules, logs, no_broker
):
    file = services.file_create(owner=user, upload=upload(server_4_bytes()))
    process_file.apply(
        args=[file.pk], task_id=file.task_id, headers={"request_id": "req-task"}
    )
    [started] = records(logs, "task started")
    [finished] = records(logs, "task finished")
    for line in (started, finished):
        assert line.request_id == "req-task"
        assert (line.task_id, line.file_id) == (file.task_id, file.pk)
    assert finished.status == "processed" and finished.state == "SUCCESS"
    assert (finished.record_count, finished.anomaly_count) == (9, 27)
    assert finished.duration >= 0
    # Nothing leaks into what the process logs next.
    assert request_id_var.get() is None


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_one_upload_can_be_followed_from_web_to_worker(live_stack, rules):
    token = Token.objects.create(user=user_create()).key
    headers = {"Authorization": f"Token {token}"}
    response = httpx.post(
        f"{live_stack.base_url}/api/files/",
        headers={**headers, "X-Request-ID": "req-e2e-follow"},
        files={"file": ("server_4.json", server_4_bytes(), "application/json")},
        timeout=30,
    )
    assert response.headers["X-Request-ID"] == "req-e2e-follow"
    file_id = response.json()["id"]

    def lines(process) -> list[dict]:
        found = []
        for text in process.output().splitlines():
            if "req-e2e-follow" in text and text.startswith("{"):
                found.append(json.loads(text))
        return found

    deadline = time.monotonic() + 30
    while not any(e["message"] == "task finished" for e in lines(live_stack.worker)):
        assert time.monotonic() < deadline, live_stack.worker.output()[-3000:]
        time.sleep(0.1)
    [uploaded] = [e for e in lines(live_stack.web) if e["message"] == "file uploaded"]
    assert uploaded["file_id"] == file_id
    finished = next(
        e for e in lines(live_stack.worker) if e["message"] == "task finished"
    )
    assert finished["file_id"] == file_id and finished["status"] == "processed"
    assert finished["task_id"] == uploaded["task_id"]
