"""End to end: real daphne and Celery worker processes, real sockets, real Redis.

An upload over HTTP is processed by the worker and announced on a WebSocket client.
"""

import json
import time

import httpx
import pytest
from rest_framework.authtoken.models import Token
from websockets.sync.client import connect

from .factories import broken_bytes, server_4_bytes, user_create

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client_token(rules) -> str:
    return Token.objects.create(user=user_create()).key


def receive_until(ws, predicate, timeout: float = 30) -> list[dict]:
    """Messages until one satisfies `predicate` (included)."""
    messages = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no matching message; got {messages}")
        message = json.loads(ws.recv(timeout=remaining))
        messages.append(message)
        if predicate(message):
            return messages


def upload(stack, token: str, content: bytes, name: str) -> dict:
    response = httpx.post(
        f"{stack.base_url}/api/files/",
        headers={"Authorization": f"Token {token}"},
        files={"file": (name, content, "application/json")},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_upload_is_processed_and_announced_live(live_stack, client_token):
    with connect(f"{live_stack.ws_url}/notification/events?token={client_token}") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "snapshot"
        file = upload(live_stack, client_token, server_4_bytes(), "server_4.json")

        messages = receive_until(
            ws, lambda m: m["type"] == "notification" and m["file_id"] == file["id"]
        )
    types = [m["type"] for m in messages]
    assert types[:2] == ["file.queued", "file.processing"]
    processed = next(m for m in messages if m["type"] == "file.processed")
    assert processed["file"]["anomaly_count"] == 27
    assert processed["file"]["record_count"] == 9
    assert processed["event_name"] == "FileProcessed"
    anomalies = next(m for m in messages if m["type"] == "file.anomalies")
    assert anomalies["file_anomaly"]["data"].startswith("cpu_usage out of range: 187")
    ids = [m["id"] for m in messages if "id" in m]
    assert ids == list(range(ids[0], ids[0] + len(ids)))

    stored = httpx.get(
        f"{live_stack.base_url}/api/files/{file['id']}/anomalies/",
        headers={"Authorization": f"Token {client_token}"},
    ).json()
    assert stored["count"] == 27


def test_malformed_file_fails_live_with_line_and_column(live_stack, client_token):
    with connect(
        f"{live_stack.ws_url}/notification/events?token={client_token}&after=0"
    ) as ws:
        file = upload(live_stack, client_token, broken_bytes(), "broken.json")
        messages = receive_until(
            ws, lambda m: m["type"] == "file.failed" and m["file_id"] == file["id"]
        )
    failed = messages[-1]
    assert failed["status"] == "failed"
    assert (failed["file"]["error"]["line"], failed["file"]["error"]["column"]) == (
        13,
        20,
    )
    assert "line 13, column 20" in failed["file_anomaly"]["data"]
    assert failed["event_name"] == "FileProcessError"


def test_a_client_that_reconnects_catches_up(live_stack, client_token):
    file = upload(live_stack, client_token, server_4_bytes(), "offline.json")
    headers = {"Authorization": f"Token {client_token}"}
    deadline = time.monotonic() + 30
    while httpx.get(
        f"{live_stack.base_url}/api/files/{file['id']}/", headers=headers
    ).json()["status"] not in ("processed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    with connect(
        f"{live_stack.ws_url}/notification/events?token={client_token}&after=0"
    ) as ws:
        messages = receive_until(ws, lambda m: m["type"] == "notification")
    assert [m["type"] for m in messages] == [
        "file.queued",
        "file.processing",
        "file.processed",
        "file.anomalies",
        "notification",
    ]
