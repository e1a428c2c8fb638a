"""Bounded messages and pages: a file whose summary is megabytes never travels whole.

A 1,000-server export with names as long as the engine keeps has a summary of
about 3 MB. Its events, list items (canonical and seed), the snapshot and the
pages' data carry the bounded resource (no servers list); only one file's
resource lists servers, capped at SUMMARY_SERVERS_BYTES of JSON.
"""

import json

import pytest
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from dwellfi.asgi import application
from files import events as file_events
from files import services
from files.models import File
from files.serializers import SUMMARY_SERVERS_BYTES
from notifications.models import Event

from .factories import long_named_servers_bytes, upload

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]

EVENT_LIMIT = 64 * 1024
# An item of a list is a few hundred bytes of fields plus a 255-character name.
ITEM_LIMIT = 4 * 1024


@pytest.fixture
def big(user, rules) -> File:
    file = services.file_create(owner=user, upload=upload(long_named_servers_bytes()))
    file = services.file_process(file_id=file.pk, task_id=file.task_id)
    assert file.status == File.Status.PROCESSED
    assert file.summary["server_count"] == len(file.summary["servers"]) == 1000
    assert size(file.summary) > 2_000_000  # what used to travel in every message
    return file


def size(value) -> int:
    """Bytes of JSON, as the renderers write it (UTF-8, not ASCII-escaped)."""
    return len(json.dumps(value, ensure_ascii=False).encode())


def test_every_durable_event_of_a_huge_summary_stays_small(big):
    events = list(Event.objects.filter(file_id=big.pk))
    assert [e.type for e in events] == [
        "file.queued",
        "file.processing",
        "file.processed",
        "file.anomalies",
        "notification",
    ]
    for event in events:
        assert size(event.message) < EVENT_LIMIT, event.type
        assert "servers" not in event.message["file"]["summary"]
    processed = events[2].message["file"]
    assert processed["summary"]["server_count"] == 1000
    assert processed["summary"]["metrics"]["cpu_usage"]["max"] == 90
    assert processed["record_count"] == 1000 and processed["anomaly_count"] == 1000


def test_progress_messages_are_tiny(user, rules, settings, monkeypatch):
    settings.DWELLFI_PROGRESS_INTERVAL = 0
    sent = []
    monkeypatch.setattr(file_events, "send_live", lambda user_id, m: sent.append(m))
    file = services.file_create(owner=user, upload=upload(long_named_servers_bytes()))
    services.file_process(file_id=file.pk, task_id=file.task_id)

    progress = [m for m in sent if m["type"] == "file.progress"]
    assert len(progress) > 3
    for message in progress:
        assert set(message) == {
            "type",
            "file_id",
            "event_name",
            "is_major",
            "status",
            "progress",
            "status_message",
            "attempts",
            "last_event_id",
        }
        assert size(message) < 300
        assert (message["file_id"], message["status"]) == (file.pk, "processing")
        assert message["attempts"] == 1 and message["last_event_id"] == 2
    fractions = [m["progress"] for m in progress]
    assert fractions == sorted(fractions) and 0 < fractions[-1] < 1


def test_list_pages_of_500_carry_bounded_items(api, big):
    response = api.get("/api/files/?page_size=500")
    assert response.status_code == 200
    (item,) = response.json()["results"]
    assert size(item) < ITEM_LIMIT
    assert "servers" not in item["summary"] and item["summary"]["server_count"] == 1000

    (seed_item,) = api.get("/files/files/").json()
    assert size(seed_item) < ITEM_LIMIT
    assert "servers" not in seed_item["meta_data"]
    assert seed_item["meta_data"]["server_count"] == 1000


def test_one_files_resource_lists_servers_capped(api, big):
    response = api.get(f"/api/files/{big.pk}/")
    body = response.json()
    servers = body["summary"]["servers"]
    assert 10 < len(servers) < 1000
    assert servers == big.summary["servers"][: len(servers)]  # the first, in order
    assert size(servers) <= SUMMARY_SERVERS_BYTES
    assert len(response.content) < SUMMARY_SERVERS_BYTES + ITEM_LIMIT
    assert body["summary"]["server_count"] == 1000

    seed = api.get(f"/files/files/{big.pk}").json()["meta_data"]
    assert seed["servers"] == servers
    assert len(seed["metrics"]) == 500  # the records the seed app charts


def test_the_pages_embed_the_bounded_resource(client, user, big):
    client.force_login(user)
    assert len(client.get("/").content) < 200_000
    assert len(client.get(f"/f/{big.pk}/").content) < 1_000_000


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("in_memory_layer")
async def test_the_snapshot_carries_bounded_files(user, rules):
    from channels.db import database_sync_to_async

    def make() -> tuple[str, int]:
        file = services.file_create(
            owner=user, upload=upload(long_named_servers_bytes())
        )
        services.file_process(file_id=file.pk, task_id=file.task_id)
        return Token.objects.create(user=user).key, file.pk

    token, file_id = await database_sync_to_async(make)()
    communicator = WebsocketCommunicator(
        application, f"/notification/events?token={token}"
    )
    assert (await communicator.connect())[0]
    snapshot = await communicator.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    assert [f["id"] for f in snapshot["files"]] == [file_id]
    assert size(snapshot) < ITEM_LIMIT
    await communicator.disconnect()
