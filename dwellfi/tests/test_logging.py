"""Structured logs: one upload followed from the web request to the worker by its id."""

import json
import logging
import sys
import time

import httpx
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django_guid import clear_guid, get_guid, set_guid
from django_guid.integrations.celery.signals import (
    publish_task_from_worker_or_request,
)
from django_guid.log_filters import CorrelationId
from pythonjsonlogger.json import JsonFormatter
from rest_framework.authtoken.models import Token

from dwellfi.log import TaskContext
from files import services
from files.models import File
from files.tasks import process_file
from files.tests.factories import server_4_bytes, upload, user_create


@pytest.fixture
def logs(caplog) -> pytest.LogCaptureFixture:
    """caplog, with records stamped as the console handler stamps them."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(CorrelationId("request_id"))
    caplog.handler.addFilter(TaskContext())
    return caplog


def records(caplog, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


def post_file(api, **headers):
    return api.post(
        "/api/files/",
        {"file": SimpleUploadedFile("server_4.json", server_4_bytes())},
        format="multipart",
        **headers,
    )


# Request ids are UUIDs (django-guid keeps a caller's only if it is one).
UPLOAD_ID = "6a1c3e0e5b7d4c1f9a2b3c4d5e6f7a8b"


@pytest.mark.django_db
def test_an_upload_logs_its_file_with_the_callers_request_id(api, logs, sent):
    response = post_file(api, HTTP_X_REQUEST_ID=UPLOAD_ID)
    assert response.status_code == 201
    assert response["X-Request-ID"] == UPLOAD_ID
    [line] = records(logs, "file uploaded")
    file = File.objects.get()
    assert line.request_id == UPLOAD_ID
    assert (line.file_id, line.size, line.task_id) == (file.pk, file.size, file.task_id)


@pytest.mark.django_db
def test_a_request_without_an_id_gets_one(api, logs, sent):
    response = post_file(api)
    generated = response["X-Request-ID"]
    assert len(generated) == 32
    assert records(logs, "file uploaded")[0].request_id == generated
    # Two requests, two ids.
    assert api.get("/api/files/")["X-Request-ID"] != generated


@pytest.mark.django_db
def test_djangos_own_lines_about_failed_requests_carry_the_id(api, logs):
    sent = "0f0e0d0c0b0a49088706050403020100"
    response = api.get("/api/files/999999/", HTTP_X_REQUEST_ID=sent)
    assert response.status_code == 404
    [line] = [r for r in logs.records if r.name == "django.request"]
    assert line.request_id == sent


@pytest.mark.django_db
@pytest.mark.parametrize(
    "sent", ["", "x" * 129, "bad id", 'a"b', "a\nb", "req-upload-1"]
)
def test_an_unusable_request_id_is_replaced(client, sent):
    response = client.get("/healthz", HTTP_X_REQUEST_ID=sent)
    assert response["X-Request-ID"] != sent and len(response["X-Request-ID"]) == 32


def configured(kind: str, name: str):
    """The formatter or filter `name` as settings.LOGGING configures it."""
    config = dict(settings.LOGGING[kind][name])
    factory = config.pop("()")
    module, attribute = factory.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[attribute]), attribute)(**config)


def test_every_record_is_one_line_of_json_with_ids_and_extras():
    record = logging.LogRecord(
        "files.x", logging.ERROR, __file__, 1, "failed %s", ("twice",), None
    )
    record.size = 12
    set_guid("req-json")
    try:
        for name in settings.LOGGING["handlers"]["console"]["filters"]:
            configured("filters", name).filter(record)
    finally:
        clear_guid()
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = configured("formatters", "json").format(record)
    assert isinstance(configured("formatters", "json"), JsonFormatter)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed twice" and entry["level"] == "ERROR"
    assert entry["logger"] == "files.x" and entry["time"].startswith("20")
    assert entry["request_id"] == "req-json" and entry["size"] == 12
    assert entry["task_id"] is None and entry["file_id"] is None
    assert "ValueError: boom" in entry["exception"]


def test_a_task_sent_during_a_request_carries_its_id():
    headers: dict = {}
    set_guid("req-send")
    try:
        publish_task_from_worker_or_request(headers=headers)
    finally:
        clear_guid()
    assert headers == {"X-Request-ID": "req-send"}


@pytest.mark.django_db
def test_the_task_logs_its_start_and_its_outcome_with_its_ids(user, rules, logs, sent):
    # (The request id that queued it comes in the message headers: shown end to
    # end below, as an eager call has no message.)
    file = services.file_create(owner=user, upload=upload(server_4_bytes()))
    process_file.apply(args=[file.pk], task_id=file.task_id)
    [started] = records(logs, "task started")
    [finished] = records(logs, "task finished")
    for line in (started, finished):
        assert (line.task_id, line.file_id) == (file.task_id, file.pk)
    assert started.request_id and finished.request_id == started.request_id
    assert finished.status == "processed"
    assert (finished.record_count, finished.anomaly_count) == (9, 27)
    assert finished.duration >= 0
    # Nothing leaks into what the process logs next.
    assert get_guid() is None


FOLLOW_ID = "feedfacefeedfacefeedfacefeedface"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_one_upload_can_be_followed_from_web_to_worker(live_stack, rules):
    token = Token.objects.create(user=user_create()).key
    headers = {"Authorization": f"Token {token}"}
    response = httpx.post(
        f"{live_stack.base_url}/api/files/",
        headers={**headers, "X-Request-ID": FOLLOW_ID},
        files={"file": ("server_4.json", server_4_bytes(), "application/json")},
        timeout=30,
    )
    assert response.headers["X-Request-ID"] == FOLLOW_ID
    file_id = response.json()["id"]

    def lines(process) -> list[dict]:
        found = []
        for text in process.output().splitlines():
            if FOLLOW_ID in text and text.startswith("{"):
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
