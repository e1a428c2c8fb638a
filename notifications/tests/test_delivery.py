"""Delivery over real sockets: real daphne, the real Redis channel layer, real clients.

Who may connect, who receives what, and what a client ends with after it
disconnects, stops reading, or is cut off by Redis.

The channel layer is channels-redis' RedisPubSubChannelLayer. It has no
per-channel `capacity` (that belongs to the list-based RedisChannelLayer, 100
messages by default, beyond which it drops): each subscriber's messages wait in
an unbounded in-process queue, then in daphne's and the kernel's socket buffers.
What does bound it is Redis' `client-output-buffer-limit pubsub` (32 MB hard, 8 MB
for 60 s by default): a subscriber that falls that far behind is disconnected and
its messages are gone. The tests below drive both cases for real; the last one
checks, in process, the consumer's answer to such a loss.
"""

import json
import logging
import os
import signal
import threading
import time
from datetime import timedelta

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import (
    EventClient,
    final_statuses,
    free_port,
    live_env,
    start_web,
    wait_for,
)
from dwellfi.asgi import application
from files import services
from files.models import File
from files.tests.factories import server_4_bytes, upload, user_create
from notifications import publisher
from notifications.models import Event
from notifications.retention import events_prune

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
PATH = "/notification/events"


def token_for(user) -> str:
    return Token.objects.create(user=user).key


def closed_with(url: str, **options) -> int:
    """The close code of a connection the server accepts and then closes."""
    with connect(url, open_timeout=10, **options) as ws:
        try:
            ws.recv(timeout=10)
        except ConnectionClosed as closed:
            return closed.rcvd.code
    raise AssertionError("the server sent a message instead of closing")


def upload_http(base_url: str, token: str, name: str) -> int:
    response = httpx.post(
        f"{base_url}/api/files/",
        headers={"Authorization": f"Token {token}"},
        files={"file": (name, server_4_bytes(), "application/json")},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def pong(messages: list[dict]) -> bool:
    return any(m["type"] == "pong" for m in messages)


def durable(messages: list[dict]) -> list[dict]:
    return [m for m in messages if "id" in m]


def at_least(count: int):
    return lambda messages: len(durable(messages)) >= count


def stored_messages(user, after: int = 0) -> list[dict]:
    return [
        event.message
        for event in Event.objects.filter(user=user, seq__gt=after).order_by("seq")
    ]


def all_final(file_ids) -> bool:
    return all(File.objects.get(pk=pk).is_final for pk in file_ids)


# --- who may connect ---------------------------------------------------------------


def test_daphne_refuses_anonymous_bad_token_and_foreign_origin(live_stack, user):
    """The same rules as the consumer tests, through daphne and a real client."""
    url = f"{live_stack.ws_url}{PATH}"
    assert closed_with(url) == 4401
    assert closed_with(f"{url}?token=not-a-token") == 4401
    assert closed_with(f"{url}?user_id={user.pk}") == 4401

    browser = Client()
    browser.force_login(user)
    cookie = {"Cookie": f"sessionid={browser.cookies['sessionid'].value}"}
    assert (
        closed_with(url, origin="https://evil.example", additional_headers=cookie)
        == 4403
    )
    assert closed_with(url, additional_headers=cookie) == 4403  # no Origin at all
    port = int(live_stack.base_url.rsplit(":", 1)[1])
    for origin in [
        live_stack.base_url.replace("http:", "https:"),  # another scheme
        f"http://127.0.0.1:{port + 1}",  # another port
        f"http://localhost:{port}",  # another host, though an allowed one
    ]:
        assert closed_with(url, origin=origin, additional_headers=cookie) == 4403
    with connect(
        url, origin=live_stack.base_url, additional_headers=cookie, open_timeout=10
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "snapshot"


# --- a socket that survives its client -----------------------------------------------


def test_garbage_and_floods_leave_the_socket_open_and_other_users_unaffected(
    live_stack, rules
):
    """Through daphne: a client sends every kind of bad frame and floods pings.

    Each bad frame is answered with an error, pings over the rate too, and the
    socket stays open and still gets its events. Meanwhile another user's socket
    answers its pings at once and gets its own events; a frame over daphne's 1 MiB
    limit closes only the socket that sent it; the log has no traceback.
    """
    hostile, bystander = user_create(), user_create()
    hostile_token, bystander_token = token_for(hostile), token_for(bystander)
    other = EventClient(f"{live_stack.ws_url}{PATH}?token={bystander_token}&after=0")
    log_before = len(live_stack.web.output())
    with connect(
        f"{live_stack.ws_url}{PATH}?token={hostile_token}&after=0", open_timeout=10
    ) as ws:
        frames = [
            b"\x00\xffbinary",
            "",
            "not json",
            "[" * 2000 + "]" * 2000,
            "x" * 5000,
            '{"type": "subscribe", "group": "user_1"}',
        ]
        for frame in frames:
            ws.send(frame)
            reply = json.loads(ws.recv(timeout=10))
            assert (reply["type"], reply["file_id"]) == ("error", None), frame
            assert reply["detail"]

        started = time.monotonic()
        for _ in range(200):
            ws.send('{"type": "ping"}')
        replies = [json.loads(ws.recv(timeout=10)) for _ in range(200)]
        assert [r["type"] for r in replies].count("pong") <= 6
        assert all(r["type"] in ("pong", "error") for r in replies)

        other.ping()
        assert other.wait_for(pong, timeout=5)
        assert time.monotonic() - started < 10
        theirs = upload_http(live_stack.base_url, bystander_token, "theirs.json")
        assert other.wait_for(
            lambda ms: any(m.get("file_id") == theirs for m in durable(ms)), timeout=30
        )

        mine = upload_http(live_stack.base_url, hostile_token, "mine.json")
        while True:
            message = json.loads(ws.recv(timeout=30))
            if message.get("file_id") == mine:
                break

        # autobahn (daphne's WebSocket layer) fails such a connection by dropping
        # it, without a closing handshake (or with 1009, "message too big").
        with pytest.raises(ConnectionClosed) as closed:
            ws.send("x" * (2 * 1024 * 1024))  # may be cut off halfway
            while True:
                ws.recv(timeout=10)
        assert closed.value.rcvd is None or closed.value.rcvd.code == 1009

    other.ping()
    assert other.wait_for(lambda ms: sum(m["type"] == "pong" for m in ms) == 2, 10)
    other.close()
    assert not [m for m in other.received() if m["type"] == "error"]
    assert "Traceback" not in live_stack.web.output()[log_before:]


def test_the_socket_limit_holds_across_web_processes(live_stack, settings, tmp_path):
    """Two daphne processes, at most three sockets a user: the fourth, opened on the
    other process, closes the oldest (4429); another user's sockets stay."""
    env = {**live_env(settings.MEDIA_ROOT), "DWELLFI_MAX_SOCKETS_PER_USER": "3"}
    ports = [free_port(), free_port()]
    webs = [start_web(env, tmp_path, port, f"web-{port}") for port in ports]
    try:
        alice, bob = user_create(), user_create()
        tokens = {alice.pk: token_for(alice), bob.pk: token_for(bob)}

        def open_on(n: int, user) -> EventClient:
            url = f"ws://127.0.0.1:{ports[n % 2]}{PATH}?token={tokens[user.pk]}"
            client = EventClient(f"{url}&after=0")
            client.ping()  # registered once its pong is back
            assert client.wait_for(pong, timeout=10)
            return client

        bobs = [open_on(n, bob) for n in range(3)]
        alices = [open_on(n, alice) for n in range(3)]
        assert not any(c.closed.is_set() for c in alices)
        alices.append(open_on(3, alice))  # on the other process than the first
        assert alices[0].closed.wait(10)
        assert alices[0].error.rcvd.code == 4429
        assert not any(c.closed.is_set() for c in alices[1:] + bobs)

        mine = upload_http(live_stack.base_url, tokens[alice.pk], "mine.json")
        theirs = upload_http(live_stack.base_url, tokens[bob.pk], "theirs.json")
        for clients, file_id in ((alices[1:], mine), (bobs, theirs)):
            for client in clients:
                assert client.wait_for(
                    lambda ms, f=file_id: any(m["file_id"] == f for m in durable(ms)),
                    timeout=15,
                )
                client.close()
    finally:
        for web in webs:
            web.stop()


def test_deleting_a_token_closes_its_sockets_in_daphne(live_stack, user):
    """The token is deleted in this process (as the admin or a script would); the
    sockets it opened, held by daphne, close with 4401, and it is refused after."""
    token = token_for(user)
    url = f"{live_stack.ws_url}{PATH}?token={token}&after=0"
    clients = [EventClient(url) for _ in range(2)]
    for client in clients:
        client.ping()
        assert client.wait_for(pong, timeout=10)
    Token.objects.filter(key=token).delete()
    for client in clients:
        assert client.closed.wait(10)
        assert client.error.rcvd.code == 4401
    assert closed_with(url) == 4401


# --- who receives what -------------------------------------------------------------


def test_two_users_with_many_files_never_see_each_others_events(live_stack, rules):
    """Two users, two sockets each, eight files each uploaded concurrently.

    Every socket ends with all of its own user's events, in order, each file
    final, and not one message about the other user's files.
    """
    users = [user_create(), user_create()]
    tokens = [token_for(u) for u in users]
    clients = {
        i: [
            EventClient(f"{live_stack.ws_url}{PATH}?token={tokens[i]}&after=0"),
            EventClient(f"{live_stack.ws_url}{PATH}?token={tokens[i]}"),
        ]
        for i in range(2)
    }
    file_ids: dict[int, list[int]] = {0: [], 1: []}

    def upload_many(i: int) -> None:
        for n in range(8):
            file_ids[i].append(
                upload_http(live_stack.base_url, tokens[i], f"u{i}-{n}.json")
            )

    threads = [threading.Thread(target=upload_many, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    wait_for(lambda: all_final(file_ids[0] + file_ids[1]), timeout=60, what="files")

    for i, user in enumerate(users):
        expected = stored_messages(user)
        own = set(file_ids[i])
        for client in clients[i]:
            assert client.wait_for(at_least(len(expected)), timeout=15)
            client.close()
            received = client.received()
            assert {m["file_id"] for m in received if m["file_id"]} <= own
            assert all(
                m.get("user_id", user.pk) == user.pk
                for m in received
                if m["type"] == "notification"
            )
            assert final_statuses(received) == {pk: "processed" for pk in own}
        with_replay, with_snapshot = (c.received() for c in clients[i])
        assert durable(with_replay) == expected
        assert with_snapshot[0]["type"] == "snapshot"
        snapshot_cursor = with_snapshot[0]["last_event_id"]
        assert durable(with_snapshot) == expected[snapshot_cursor:]


# --- what a client ends with -------------------------------------------------------


def test_a_client_that_reconnects_with_after_gets_exactly_what_it_missed(
    live_stack, user, rules
):
    """Disconnect, miss the events of three uploads, reconnect with `?after=`.

    The replay holds exactly the missed events — the same messages, ids
    contiguous from the cursor, no gap, no duplicate — and live events follow.
    """
    token = token_for(user)
    url = f"{live_stack.ws_url}{PATH}?token={token}"
    first = EventClient(f"{url}&after=0")
    file_id = upload_http(live_stack.base_url, token, "seen.json")
    assert first.wait_for(
        lambda ms: any(
            m["type"] == "notification" and m["file_id"] == file_id for m in ms
        ),
        timeout=30,
    )
    first.close()
    cursor = max(m["id"] for m in durable(first.received()))

    missed = [
        upload_http(live_stack.base_url, token, f"missed-{n}.json") for n in range(3)
    ]
    wait_for(lambda: all_final(missed), timeout=30, what="missed files")

    again = EventClient(f"{url}&after={cursor}")
    again.ping()
    assert again.wait_for(pong, timeout=10)
    replayed = durable(again.received())
    assert replayed == stored_messages(user, after=cursor)
    assert [m["id"] for m in replayed] == list(
        range(cursor + 1, cursor + 1 + len(replayed))
    )
    assert {m["file_id"] for m in replayed} == set(missed)
    assert final_statuses(replayed) == {pk: "processed" for pk in missed}

    live = upload_http(live_stack.base_url, token, "live.json")
    assert again.wait_for(
        lambda ms: any(
            m["type"] == "notification" and m["file_id"] == live for m in ms
        ),
        timeout=30,
    )
    again.close()
    ids = [m["id"] for m in durable(again.received())]
    assert ids == list(range(cursor + 1, cursor + 1 + len(ids)))


def process_in_process(owner, count: int) -> list[int]:
    """Upload and process files in this process, as a worker would.

    Their events reach the daphne under test through the shared Redis.
    """
    file_ids = []
    for _ in range(count):
        file = services.file_create(owner=owner, upload=upload(server_4_bytes()))
        services.file_process(file_id=file.pk, task_id=file.task_id)
        file_ids.append(file.pk)
    return file_ids


def test_a_client_behind_the_retention_gets_a_reset_instead_of_a_gap(
    live_stack, user, rules, sent, settings
):
    """Events older than the retention are pruned while a client is away; when it
    reconnects with its old cursor it gets a `snapshot` with `reset: true` (the
    files as they are now), then live events, and the REST list answers 410."""
    settings.DWELLFI_EVENT_RETENTION_DAYS = 7
    token = token_for(user)
    seen = process_in_process(user, 1)
    cursor = max(m["id"] for m in stored_messages(user))
    missed = process_in_process(user, 2)
    Event.objects.filter(user=user).update(
        created_at=timezone.now() - timedelta(days=8)
    )
    assert events_prune() == 15

    client = EventClient(f"{live_stack.ws_url}{PATH}?token={token}&after={cursor}")
    assert client.wait_for(lambda ms: len(ms) >= 1, timeout=10)
    snapshot = client.received()[0]
    assert (snapshot["type"], snapshot["reset"]) == ("snapshot", True)
    assert snapshot["last_event_id"] == 15
    assert {f["id"]: f["status"] for f in snapshot["files"]} == {
        pk: "processed" for pk in seen + missed
    }
    process_in_process(user, 1)
    assert client.wait_for(at_least(5), timeout=15)
    client.close()
    assert [m["id"] for m in durable(client.received())] == list(range(16, 21))

    response = httpx.get(
        f"{live_stack.base_url}/api/events/?after={cursor}",
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    assert response.status_code == 410
    assert response.json()["last_event_id"] == 20


def test_a_client_that_stops_reading_gets_every_event_when_it_resumes(
    live_stack, user, rules, sent
):
    """A client that reads nothing while 300 events (three times channels-redis'
    default capacity of 100) are sent to it.

    With the pub/sub layer nothing is dropped: the messages wait in daphne and
    the socket buffers, and when the client reads again it gets all of them, in
    order, and every file's final status.
    """
    token = token_for(user)
    with connect(
        f"{live_stack.ws_url}{PATH}?token={token}&after=0",
        open_timeout=10,
        max_queue=4,  # the client's reader stops taking frames off the socket
    ) as ws:
        ws.send('{"type": "ping"}')
        assert json.loads(ws.recv(timeout=10))["type"] == "pong"
        file_ids = process_in_process(user, 60)
        time.sleep(1)  # everything is sent meanwhile, nothing read
        expected = stored_messages(user)
        assert len(expected) == 300
        received = []
        while len(received) < len(expected):
            message = json.loads(ws.recv(timeout=15))
            if "id" in message:
                received.append(message)
    assert received == expected
    assert final_statuses(received) == {pk: "processed" for pk in file_ids}


def test_a_subscriber_redis_cuts_off_still_ends_with_the_final_state(
    redis_server, user, rules, sent, settings, tmp_path
):
    """Redis disconnects a subscriber that falls behind its pub/sub output buffer
    limit, and what it held is lost. Here the limit is 64 KB and daphne is frozen
    (SIGSTOP) while 10 MB of live-only messages (more than the kernel's socket
    buffers take in) and then the events of 20 files are sent; after SIGCONT its
    channel layer reconnects and resubscribes.

    The client then ends with every event exactly once: the client's ping makes
    the consumer replay what the layer lost, and live events flow again.
    """
    client = redis_server.client()
    client.config_set("client-output-buffer-limit", "pubsub 65536 32768 1")
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [redis_server.url]},
        }
    }
    env = {**live_env(settings.MEDIA_ROOT), "REDIS_URL": redis_server.url}
    port = free_port()
    web = start_web(env, tmp_path, port)
    try:
        events = EventClient(
            f"ws://127.0.0.1:{port}{PATH}?token={token_for(user)}&after=0"
        )
        events.ping()
        assert events.wait_for(pong, timeout=10)
        os.kill(web.popen.pid, signal.SIGSTOP)
        try:
            filler = {"type": "file.progress", "file_id": None, "pad": "x" * 32768}
            for _ in range(320):
                publisher.send_live(user.pk, filler)
            frozen = process_in_process(user, 20)
        finally:
            os.kill(web.popen.pid, signal.SIGCONT)
        wait_for(
            lambda: "overcoming of output buffer limits" in redis_server.output(),
            timeout=10,
            what="Redis cutting the subscriber off",
        )
        time.sleep(1)  # whatever daphne still held is delivered meanwhile
        lost = len(stored_messages(user)) - len(durable(events.received()))
        assert lost > 0

        events.ping()
        assert events.wait_for(
            lambda ms: sum(m["type"] == "pong" for m in ms) == 2, timeout=15
        )
        assert durable(events.received()) == stored_messages(user)

        # The layer resubscribed: a new file's events arrive live, without a ping.
        later = process_in_process(user, 1)
        assert events.wait_for(
            lambda ms: any(
                m["type"] == "notification" and m["file_id"] == later[0] for m in ms
            ),
            timeout=15,
        )
        events.close()
    finally:
        web.stop()
    received = durable(events.received())
    assert received == stored_messages(user)
    assert final_statuses(received) == {pk: "processed" for pk in frozen + later}
    logger.info(f"{lost} of {len(received)} events lost by the layer, all replayed")


@pytest.mark.usefixtures("in_memory_layer", "sent")
async def test_a_ping_delivers_events_the_layer_dropped(user, rules, monkeypatch):
    """When the last events were lost there is no later one to reveal the gap:
    the client's ping makes the consumer catch up from the database first."""
    token = await database_sync_to_async(token_for)(user)
    communicator = WebsocketCommunicator(application, f"{PATH}?token={token}&after=0")
    assert (await communicator.connect())[0]
    # The connection's own catch-up runs on after the accept: let it end first.
    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "pong"
    monkeypatch.setattr(publisher, "send_live", lambda user_id, message: None)
    await database_sync_to_async(process_in_process)(user, 1)
    assert await communicator.receive_nothing(timeout=0.3)

    await communicator.send_json_to({"type": "ping"})
    received = [await communicator.receive_json_from(timeout=5) for _ in range(6)]
    assert [m.get("id") for m in received] == [1, 2, 3, 4, 5, None]
    assert received[-1]["type"] == "pong"
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()
