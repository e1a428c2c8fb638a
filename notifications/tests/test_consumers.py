"""The notification WebSocket, through Channels' WebsocketCommunicator."""

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from rest_framework.authtoken.models import Token

from dwellfi.asgi import application
from files import services
from files.tests.factories import server_4_bytes, upload, user_create
from notifications import consumers, publisher

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("in_memory_layer", "sent"),
]
PATH = "/notification/events"


@database_sync_to_async
def make_user():
    return user_create()


@database_sync_to_async
def token_for(user) -> str:
    return Token.objects.create(user=user).key


@database_sync_to_async
def session_cookie(user) -> bytes:
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    # The backend that signs users in (the first one, django-axes', only counts).
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}".encode()


@database_sync_to_async
def upload_for(user) -> int:
    return services.file_create(owner=user, upload=upload(server_4_bytes())).pk


async def connect(
    query: str = "", headers: list | None = None
) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        application, f"{PATH}?{query}", headers=headers
    )
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def closed_with(communicator: WebsocketCommunicator) -> int:
    output = await communicator.receive_output(timeout=2)
    assert output["type"] == "websocket.close"
    return output["code"]


async def test_anonymous_connections_are_closed_with_4401():
    assert await closed_with(await connect()) == 4401


async def test_a_bad_token_is_refused():
    assert await closed_with(await connect("token=not-a-token")) == 4401


async def test_the_seed_user_id_parameter_is_not_trusted():
    user = await make_user()
    assert await closed_with(await connect(f"user_id={user.pk}")) == 4401


async def test_a_token_connection_gets_a_snapshot():
    user = await make_user()
    file_id = await upload_for(user)
    communicator = await connect(f"token={await token_for(user)}")
    snapshot = await communicator.receive_json_from()
    assert snapshot["type"] == "snapshot" and snapshot["file_id"] is None
    assert snapshot["last_event_id"] == 1
    assert [f["id"] for f in snapshot["files"]] == [file_id]
    assert snapshot["files"][0]["status"] == "queued"
    await communicator.disconnect()


async def cookie_connection(
    cookie: tuple, host: str, origin: str | None, *extra: tuple, scheme: str = "ws"
) -> int | str:
    """The close code (or "open") of a cookie-authenticated handshake."""
    headers = [cookie, (b"host", host.encode()), *extra]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, PATH, headers=headers)
    communicator.scope["scheme"] = scheme
    assert (await communicator.connect())[0]
    output = await communicator.receive_output(timeout=2)
    await communicator.disconnect()
    if output["type"] == "websocket.close":
        return output["code"]
    return "open"


async def test_a_cookie_connection_needs_its_own_or_a_trusted_origin(settings):
    """Scheme, host and port must all match the site's own origin (Host, allowed
    hosts) or a CSRF_TRUSTED_ORIGINS entry; a token connection needs none."""
    user = await make_user()
    cookie = (b"cookie", await session_cookie(user))
    host = "localhost:8000"

    assert await cookie_connection(cookie, host, "http://localhost:8000") == "open"
    for origin in [
        None,  # missing
        "null",
        "https://evil.example",
        "https://localhost:8000",  # another scheme
        "http://localhost:9000",  # another port
        "http://localhost",  # the default port is another port
        "http://localhost:8000.evil.example",
    ]:
        assert await cookie_connection(cookie, host, origin) == 4403, origin
    # A Host that is not an allowed host is no origin of the site's own.
    assert await cookie_connection(cookie, "evil.example", "http://evil.example") == (
        4403
    )

    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example", "https://*.dwellfi.example"]
    for origin in ["https://app.example", "https://eu.dwellfi.example"]:
        assert await cookie_connection(cookie, host, origin) == "open", origin
    for origin in ["http://app.example", "https://app.example:444"]:
        assert await cookie_connection(cookie, host, origin) == 4403, origin

    token = await token_for(user)
    no_origin = await connect(f"token={token}")
    assert (await no_origin.receive_json_from())["type"] == "snapshot"
    await no_origin.disconnect()


async def test_behind_a_tls_proxy_the_own_origin_is_https(settings):
    """With SECURE_PROXY_SSL_HEADER (production), X-Forwarded-Proto tells the
    scheme, as it does for Django's own CSRF check; a direct wss handshake is
    https too."""
    settings.ALLOWED_HOSTS = ["dwellfi.example"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    user = await make_user()
    forwarded = (b"x-forwarded-proto", b"https")
    cookie = (b"cookie", await session_cookie(user))

    async def through_proxy(origin: str) -> int | str:
        return await cookie_connection(cookie, "dwellfi.example", origin, forwarded)

    assert await through_proxy("https://dwellfi.example") == "open"
    assert await through_proxy("http://dwellfi.example") == 4403
    direct = "https://dwellfi.example"
    assert await cookie_connection(cookie, "dwellfi.example", direct) == 4403
    assert (
        await cookie_connection(cookie, "dwellfi.example", direct, scheme="wss")
        == "open"
    )


async def test_live_events_reach_only_their_user():
    alice, bob = await make_user(), await make_user()
    alice_ws = await connect(f"token={await token_for(alice)}&after=0")
    bob_ws = await connect(f"token={await token_for(bob)}&after=0")

    file_id = await upload_for(alice)
    message = await alice_ws.receive_json_from(timeout=2)
    assert (message["id"], message["type"], message["file_id"]) == (
        1,
        "file.queued",
        file_id,
    )
    assert message["event_name"] == "FileQueued" and message["file"]["id"] == file_id
    assert await bob_ws.receive_nothing(timeout=0.3)
    await alice_ws.disconnect()
    await bob_ws.disconnect()


async def test_reconnecting_with_after_replays_exactly_the_missed_events():
    user = await make_user()
    token = await token_for(user)
    for _ in range(3):
        await upload_for(user)

    communicator = await connect(f"token={token}&after=1")
    replayed = [await communicator.receive_json_from() for _ in range(2)]
    assert [m["id"] for m in replayed] == [2, 3]
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_a_dropped_live_message_is_filled_in_from_the_database(monkeypatch):
    user = await make_user()
    communicator = await connect(f"token={await token_for(user)}&after=0")
    send_live = publisher.send_live
    monkeypatch.setattr(publisher, "send_live", lambda user_id, message: None)
    await upload_for(user)
    await upload_for(user)
    monkeypatch.setattr(publisher, "send_live", send_live)
    await upload_for(user)

    received = [await communicator.receive_json_from(timeout=2) for _ in range(3)]
    assert [m["id"] for m in received] == [1, 2, 3]
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_ping_is_answered():
    user = await make_user()
    communicator = await connect(f"token={await token_for(user)}&after=0")
    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from())["type"] == "pong"
    await communicator.disconnect()


# --- a socket that survives its client ------------------------------------------------


async def error_from(communicator: WebsocketCommunicator) -> dict:
    message = await communicator.receive_json_from(timeout=2)
    assert message["type"] == "error" and message["file_id"] is None, message
    return message


async def test_bad_frames_are_answered_with_an_error_and_the_socket_stays_open():
    user = await make_user()
    communicator = await connect(f"token={await token_for(user)}&after=0")
    bad = [
        ({"bytes": b"\x00\x01binary"}, "Binary frames are not accepted"),
        ({"text": ""}, "Not JSON"),
        ({"text": "not json at all"}, "Not JSON"),
        ({"text": "[" * 3000 + "]" * 3000}, "Frame too large"),
        ({"text": "[" * 2000 + "]" * 2000}, "nested too deeply"),
        ({"text": '{"type": "ping", "pad": "' + "é" * 2100 + '"}'}, "too large"),
        ({"text": '{"type": "subscribe"}'}, "Unknown message"),
        ({"text": "[1, 2]"}, "Unknown message"),
    ]
    for frame, detail in bad:
        await communicator.send_input({"type": "websocket.receive", **frame})
        assert detail in (await error_from(communicator))["detail"], frame

    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from())["type"] == "pong"
    file_id = await upload_for(user)
    assert (await communicator.receive_json_from(timeout=2))["file_id"] == file_id
    await communicator.disconnect()


async def test_a_ping_flood_is_answered_without_reading_the_database_each_time(
    monkeypatch,
):
    from notifications import selectors

    user = await make_user()
    reads = []
    event_list = selectors.event_list
    monkeypatch.setattr(
        selectors,
        "event_list",
        lambda **kwargs: reads.append(kwargs) or event_list(**kwargs),
    )
    communicator = await connect(f"token={await token_for(user)}&after=0")
    for _ in range(50):
        await communicator.send_json_to({"type": "ping"})
    answers = [await communicator.receive_json_from(timeout=2) for _ in range(50)]

    assert [a["type"] for a in answers].count("pong") == consumers.PING_BURST
    refused = [a for a in answers if a["type"] == "error"]
    assert len(refused) == 50 - consumers.PING_BURST
    assert refused[0]["detail"].startswith("Too many pings")
    assert 0 < refused[0]["retry_after"] <= consumers.PING_INTERVAL
    # The replay at connect, then one per answered ping.
    assert len(reads) == 1 + consumers.PING_BURST

    await asyncio.sleep(consumers.PING_INTERVAL)  # a token comes back
    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from(timeout=2))["type"] == "pong"
    await communicator.disconnect()


async def test_one_users_slow_replay_does_not_hold_up_another_users(monkeypatch):
    """The consumers' queries run on threads of their own: while one user's replay
    takes seconds, another user connects, catches up and gets a live event."""
    from notifications import selectors

    slow, other = await make_user(), await make_user()
    slow_token, other_token = await token_for(slow), await token_for(other)
    event_list = selectors.event_list

    def slow_for_one_user(*, user, after=0):
        if user.pk == slow.pk:
            time.sleep(3)
        return event_list(user=user, after=after)

    monkeypatch.setattr(selectors, "event_list", slow_for_one_user)
    await upload_for(slow)
    stuck = await connect(f"token={slow_token}&after=0")  # replaying for 3 s

    started = time.monotonic()
    quick = await connect(f"token={other_token}&after=0")
    file_id = await upload_for(other)
    message = await quick.receive_json_from(timeout=2)
    assert (message["type"], message["file_id"]) == ("file.queued", file_id)
    await quick.send_json_to({"type": "ping"})
    assert (await quick.receive_json_from(timeout=2))["type"] == "pong"
    assert time.monotonic() - started < 1.5

    assert (await stuck.receive_json_from(timeout=5))["type"] == "file.queued"
    await quick.disconnect()
    await stuck.disconnect()


async def test_a_nul_byte_in_a_token_is_refused_like_any_bad_token():
    assert await closed_with(await connect("token=abc%00def")) == 4401
    assert await closed_with(await connect("token=" + "a" * 100)) == 4401


# --- sockets per user -----------------------------------------------------------------


async def test_a_user_over_the_socket_limit_loses_the_oldest_socket(settings):
    settings.DWELLFI_MAX_SOCKETS_PER_USER = 2
    alice, bob = await make_user(), await make_user()
    alice_token, bob_token = await token_for(alice), await token_for(bob)
    bobs = [await connect(f"token={bob_token}&after=0") for _ in range(2)]
    first = await connect(f"token={alice_token}&after=0")
    second = await connect(f"token={alice_token}&after=0")
    assert await first.receive_nothing(timeout=0.2)

    third = await connect(f"token={alice_token}&after=0")
    output = await first.receive_output(timeout=2)
    assert (output["type"], output["code"]) == ("websocket.close", 4429)

    file_id = await upload_for(alice)
    for kept in (second, third):
        assert (await kept.receive_json_from(timeout=2))["file_id"] == file_id
    theirs = await upload_for(bob)
    for socket in bobs:  # another user's sockets are not counted with hers
        assert (await socket.receive_json_from(timeout=2))["file_id"] == theirs

    # A closed socket stops counting: one more opens without displacing any.
    await second.disconnect()
    fourth = await connect(f"token={alice_token}&after=0")
    assert await third.receive_nothing(timeout=0.3)
    for communicator in (first, third, fourth, *bobs):
        await communicator.disconnect()


# --- credentials that stop being valid ----------------------------------------------


@database_sync_to_async
def delete_token(key: str) -> None:
    Token.objects.filter(key=key).delete()


async def test_deleting_a_token_closes_the_sockets_it_opened():
    """Its sockets close with 4401; the user's browser session stays, and so does
    a socket of the token made next."""
    user = await make_user()
    doomed = await token_for(user)
    cookie = (b"cookie", await session_cookie(user))
    with_doomed = [await connect(f"token={doomed}&after=0") for _ in range(2)]
    browser = await connect(
        headers=[cookie, (b"host", b"localhost"), (b"origin", b"http://localhost")]
    )
    assert (await browser.receive_json_from())["type"] == "snapshot"

    await delete_token(doomed)
    for communicator in with_doomed:
        assert await closed_with(communicator) == 4401
    assert await closed_with(await connect(f"token={doomed}")) == 4401
    with_new = await connect(f"token={await token_for(user)}&after=0")
    file_id = await upload_for(user)
    for communicator in (with_new, browser):
        assert (await communicator.receive_json_from(timeout=2))["file_id"] == file_id
    for communicator in (*with_doomed, with_new, browser):
        await communicator.disconnect()


async def test_signing_out_closes_the_sockets_of_that_session():
    """Django's logout closes its session's sockets; another session's stay."""
    from django.contrib.auth import logout
    from django.test import RequestFactory

    user = await make_user()
    sessions = [await session_cookie(user) for _ in "ab"]
    sockets = [
        await connect(
            headers=[
                (b"cookie", cookie),
                (b"host", b"localhost"),
                (b"origin", b"http://localhost"),
            ]
        )
        for cookie in sessions
    ]
    for socket in sockets:
        assert (await socket.receive_json_from())["type"] == "snapshot"

    @database_sync_to_async
    def sign_out(cookie: bytes) -> None:
        request = RequestFactory().get("/")
        request.session = SessionStore(session_key=cookie.decode().split("=")[1])
        request.user = user
        logout(request)

    await sign_out(sessions[0])
    assert await closed_with(sockets[0]) == 4401
    file_id = await upload_for(user)
    assert (await sockets[1].receive_json_from(timeout=2))["file_id"] == file_id
    for socket in sockets:
        await socket.disconnect()


async def test_deleting_or_deactivating_a_user_closes_all_their_sockets():
    alice, bob, carol = await make_user(), await make_user(), await make_user()
    alice_token, bob_token = await token_for(alice), await token_for(bob)
    alices = [await connect(f"token={alice_token}&after=0") for _ in "ab"]
    bobs = [await connect(f"token={bob_token}&after=0") for _ in "ab"]
    carols = await connect(f"token={await token_for(carol)}&after=0")

    await database_sync_to_async(alice.delete)()
    bob.is_active = False
    await database_sync_to_async(bob.save)()
    for communicator in (*alices, *bobs):
        assert await closed_with(communicator) == 4401
    file_id = await upload_for(carol)
    assert (await carols.receive_json_from(timeout=2))["file_id"] == file_id
    for communicator in (*alices, *bobs, carols):
        await communicator.disconnect()


async def test_a_deletion_rolled_back_closes_nothing():
    from django.db import transaction

    user = await make_user()
    token = await token_for(user)
    communicator = await connect(f"token={token}&after=0")

    @database_sync_to_async
    def delete_then_roll_back() -> None:
        with transaction.atomic():
            Token.objects.filter(key=token).delete()
            transaction.set_rollback(True)

    await delete_then_roll_back()
    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from(timeout=2))["type"] == "pong"
    await communicator.disconnect()
