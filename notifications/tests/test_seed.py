"""The seed app's protocol on the notification WebSocket (WebsocketCommunicator)."""

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from files import services
from files.models import File
from files.tests.factories import broken_bytes, server_4_bytes, upload
from files.tests.test_api import SEED_FIELDS
from notifications import publisher
from notifications.publisher import user_group

from .test_consumers import closed_with, connect, make_user, token_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("in_memory_layer", "sent", "rules"),
]


@database_sync_to_async
def processed_file(user, content: bytes = b"") -> int:
    file = services.file_create(owner=user, upload=upload(content or server_4_bytes()))
    services.file_process(file_id=file.pk, task_id=file.task_id)
    return file.pk


async def seed_connection(user, query: str = "", token: str = ""):
    token = token or await token_for(user)
    return await connect(f"user_id=anything&token={token}{query}")


async def receive(communicator, count: int) -> list[dict]:
    messages = [await communicator.receive_json_from(timeout=5) for _ in range(count)]
    assert await communicator.receive_nothing(timeout=0.3)
    return messages


def assert_processed_sequence(messages: list[dict], file_id: int, user) -> None:
    """FileProcessed, FileProcessError (the anomalies), Notification: nothing else."""
    processed, anomalies, notification = messages
    assert set(processed) == {
        "id",
        "event_name",
        "is_major",
        "file_id",
        "status_message",
        "file",
    }
    assert (processed["event_name"], processed["file_id"]) == ("FileProcessed", file_id)
    assert processed["is_major"] is True
    file = processed["file"]
    assert set(file) == SEED_FIELDS
    assert (file["id"], file["task_status"], file["is_processed"]) == (
        file_id,
        "processed",
        True,
    )
    assert file["created_by_id"] == str(user.pk)
    assert "metrics" not in file["meta_data"]  # the app fetches the file for those

    assert anomalies["event_name"] == "FileProcessError"
    assert anomalies["file_anomaly"]["file_id"] == file_id
    assert anomalies["file_anomaly"]["data"].startswith("cpu_usage out of range: 187")

    assert set(notification) == {
        "id",
        "event_name",
        "is_major",
        "user_id",
        "title",
        "description",
    }
    assert notification["event_name"] == "Notification"
    assert notification["user_id"] == str(user.pk)
    assert [m["id"] for m in messages] == sorted(m["id"] for m in messages)


async def test_a_seed_connection_still_needs_a_token_or_session():
    user = await make_user()
    assert await closed_with(await connect(f"user_id={user.pk}")) == 4401


async def test_a_seed_connection_gets_no_snapshot():
    user = await make_user()
    await processed_file(user)
    communicator = await seed_connection(user)
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_live_outcome_in_the_seed_protocol():
    user = await make_user()
    communicator = await seed_connection(user)
    file_id = await processed_file(user)
    # queued and processing were left out
    assert_processed_sequence(await receive(communicator, 3), file_id, user)
    await communicator.disconnect()


async def test_a_failure_carries_its_error_text():
    user = await make_user()
    communicator = await seed_connection(user)
    file_id = await processed_file(user, broken_bytes())
    failed, notification = await receive(communicator, 2)
    error_text = (await database_sync_to_async(File.objects.get)(pk=file_id)).error_text
    assert failed["event_name"] == "FileProcessError"
    assert failed["file_anomaly"] == {"file_id": file_id, "data": error_text}
    assert "line 13, column 20" in error_text
    assert notification["event_name"] == "Notification"
    assert "file_id" not in notification
    await communicator.disconnect()


async def test_replay_after_a_cursor_sends_only_the_seed_events():
    user = await make_user()
    file_id = await processed_file(user)
    communicator = await seed_connection(user, "&after=0")
    assert_processed_sequence(await receive(communicator, 3), file_id, user)
    await communicator.disconnect()


async def test_the_user_id_value_is_never_trusted():
    alice, bob = await make_user(), await make_user()
    communicator = await connect(f"user_id={bob.pk}&token={await token_for(alice)}")
    await processed_file(bob)
    assert await communicator.receive_nothing(timeout=0.3)
    file_id = await processed_file(alice)
    assert_processed_sequence(await receive(communicator, 3), file_id, alice)
    await communicator.disconnect()


async def test_progress_and_pong_are_not_sent():
    user = await make_user()
    token = await token_for(user)
    seed = await seed_connection(user, "&after=0", token)
    canonical = await connect(f"token={token}&after=0")
    progress = {"type": "file.progress", "file_id": 1, "progress": 0.5}
    await get_channel_layer().group_send(
        user_group(user.pk), {"type": "event.message", "message": progress}
    )
    assert (await canonical.receive_json_from(timeout=2))["type"] == "file.progress"
    await seed.send_json_to({"type": "ping"})
    assert await seed.receive_nothing(timeout=0.3)
    await seed.disconnect()
    await canonical.disconnect()


async def test_a_dropped_live_message_is_filled_in(monkeypatch):
    user = await make_user()
    communicator = await seed_connection(user, "&after=0")
    send_live = publisher.send_live
    monkeypatch.setattr(publisher, "send_live", lambda user_id, message: None)
    first = await processed_file(user)
    monkeypatch.setattr(publisher, "send_live", send_live)
    second = await processed_file(user)

    messages = await receive(communicator, 6)
    assert_processed_sequence(messages[:3], first, user)
    assert_processed_sequence(messages[3:], second, user)
    await communicator.disconnect()


async def test_a_deleted_file_is_never_mentioned():
    user = await make_user()
    file_id = await processed_file(user)
    file = await database_sync_to_async(File.objects.get)(pk=file_id)
    await database_sync_to_async(services.file_delete)(file=file)

    # The file's events went with it; its deletion is nothing the app can parse.
    communicator = await seed_connection(user, "&after=0")
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_bad_frames_get_no_answer_and_the_socket_stays_open():
    """The seed app never sends, and could not parse an error: nothing comes back."""
    user = await make_user()
    communicator = await seed_connection(user, "&after=0")
    for frame in ({"bytes": b"\x00"}, {"text": ""}, {"text": "x" * 5000}):
        await communicator.send_input({"type": "websocket.receive", **frame})
    for _ in range(20):
        await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_nothing(timeout=0.5)
    file_id = await processed_file(user)
    assert_processed_sequence(await receive(communicator, 3), file_id, user)
    await communicator.disconnect()
