"""The notification WebSocket: authenticate, join the user's group, replay, forward."""

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from rest_framework.authtoken.models import Token

from . import selectors
from .filedata import file_snapshot
from .origins import origin_allowed
from .publisher import user_group
from .retention import events_pruned_through
from .seed import is_seed_event, seed_messages, speaks_seed
from .sockets import credential_digest, socket_register, socket_unregister

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
# The user opened more than DWELLFI_MAX_SOCKETS_PER_USER sockets: the oldest goes.
CLOSE_REPLACED = 4429
REPLAY_BATCH = 500
# Clients only ever send `{"type": "ping"}`; a larger frame is answered with an
# error and not parsed. (daphne itself drops a connection that sends a message
# over 1 MiB, its --websocket-max-message-size, before the consumer sees it.)
MAX_FRAME_BYTES = 4096
# Each ping reads the database (it catches up on events the layer dropped): a
# socket may send PING_BURST at once, then one every PING_INTERVAL seconds; the
# others are answered with an error and read nothing.
PING_BURST = 5
PING_INTERVAL = 2.0
# database_sync_to_async is thread-sensitive by default: every consumer's queries
# ran on one shared thread, so one user's long replay held up every other user's
# messages. The queries here share no connection or transaction, so they run on a
# pool of their own instead, small beside the process's database pool.
DB_THREADS = 4
db_executor = ThreadPoolExecutor(max_workers=DB_THREADS, thread_name_prefix="ws-db")


def in_db_thread(func: Callable) -> Callable:
    """`func` run by the consumers' own database threads, awaitable."""
    return database_sync_to_async(func, thread_sensitive=False, executor=db_executor)


class _Bucket:
    """A token bucket: `burst` at once, then one every `interval` seconds."""

    def __init__(self, burst: int, interval: float) -> None:
        self.burst, self.interval = burst, interval
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) / self.interval)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * self.interval


class EventConsumer(AsyncJsonWebsocketConsumer):
    """Sends a user every event about their files, catching up from the database first.

    Connect with the session cookie (browsers; the Origin must pass
    `notifications.origins`) or with `?token=KEY` (clients). `?after=ID` replays
    every durable event after ID; without it the first message is a `snapshot`.
    Live events that arrive out of sequence make the consumer fill the gap from
    the database, so a message the channel layer dropped is still delivered when
    the next one comes, or at the client's next ping.

    A query that names the seed's `user_id` makes it speak the seed app's protocol
    (`notifications.seed`): the same events, cursor and replay, but only those the
    app can parse, translated, and no snapshot or pong.

    A user holds at most DWELLFI_MAX_SOCKETS_PER_USER sockets, in every process
    together (`notifications.sockets`): opening one more closes the oldest with
    CLOSE_REPLACED. Deleting the token or the user, deactivating the user or
    signing the session out closes the sockets they opened with
    CLOSE_UNAUTHENTICATED (`notifications.signals`).

    What a client sends never closes the socket: a frame that is not a JSON ping
    (binary, empty, not JSON, nested too deep, over MAX_FRAME_BYTES, another type)
    or a ping over the rate gets `{"type": "error", "detail": ...}`. A seed
    connection gets nothing for them: its app never sends, and could not parse an
    error.
    """

    async def connect(self) -> None:
        query = self.scope.get("query_string", b"").decode("latin-1")
        params = parse_qs(query)
        self.seed = speaks_seed(query)
        self.pings = _Bucket(PING_BURST, PING_INTERVAL)
        self.user = await self._authenticate(params)
        await self.accept()
        if self.user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if self.user is False:
            await self.close(code=CLOSE_FORBIDDEN_ORIGIN)
            return
        self.group = user_group(self.user.pk)
        # Join before reading the database: events committed meanwhile arrive live
        # and are dropped below if the replay already sent them.
        await self.channel_layer.group_add(self.group, self.channel_name)
        for channel in await socket_register(
            user_id=self.user.pk, channel_name=self.channel_name
        ):
            await self.channel_layer.send(channel, {"type": "socket.replaced"})
        self.last_sent = 0
        after = _cursor(params.get("after"))
        if after is None:
            await self._send_snapshot()
        else:
            self.last_sent = after
            await self._replay()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await socket_unregister(
                user_id=self.user.pk, channel_name=self.channel_name
            )

    async def socket_replaced(self, event: dict[str, Any]) -> None:
        """The user opened more sockets than allowed, and this is the oldest."""
        # (No reason text: daphne sends the code alone.)
        await self.close(code=CLOSE_REPLACED)

    async def sockets_close(self, event: dict[str, Any]) -> None:
        """The user's credentials stopped being valid: this socket's, or all."""
        named = {key: event[key] for key in ("token", "session") if key in event}
        if not named or any(self.credential == (k, v) for k, v in named.items()):
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs
    ) -> None:
        """A client frame: a ping is answered, anything else gets an error."""
        if getattr(self, "group", None) is None:
            return  # refused at connect: the socket is closing
        problem = _frame_problem(text_data)
        if problem is not None:
            await self._refuse(problem)
            return
        wait = self.pings.take()
        if wait:
            await self._refuse(
                f"Too many pings: at most {PING_BURST} at once, then one every "
                f"{PING_INTERVAL:g} s.",
                retry_after=round(wait, 1),
            )
            return
        await self._ping()

    async def _ping(self) -> None:
        """Catch up from the database, then answer `pong`.

        A user's last events may have been dropped by the channel layer (Redis
        restarted, a subscriber it cut off), and with no later event to reveal the
        gap only this finds them.
        """
        await self._replay()
        if not self.seed:
            await self.send_json({"type": "pong", "file_id": None})

    async def _refuse(self, detail: str, **fields: Any) -> None:
        if not self.seed:  # the seed app could not parse an error
            await self.send_json(
                {"type": "error", "file_id": None, "detail": detail, **fields}
            )

    async def event_message(self, event: dict[str, Any]) -> None:
        """Forward one event from the channel layer, in cursor order."""
        message = event["message"]
        event_id = message.get("id")
        if event_id is None:  # live-only (progress)
            if not self.seed:
                await self.send_json(message)
        elif event_id == self.last_sent + 1:
            self.last_sent = event_id
            await self._send_events([message])
        elif event_id > self.last_sent:
            await self._replay()

    async def _authenticate(
        self, params: dict[str, list[str]]
    ) -> AbstractBaseUser | None | bool:
        """The user; None when not authenticated; False for a foreign Origin.

        Also notes the credential (`self.credential`) a close can name.
        """
        if "token" in params:
            key = params["token"][0]
            self.credential = ("token", credential_digest(key))
            return await _token_user(key)
        user = self.scope.get("user") or AnonymousUser()
        if not user.is_authenticated:
            return None
        session_key = self.scope["session"].session_key or ""
        self.credential = ("session", credential_digest(session_key))
        return user if origin_allowed(self.scope) else False

    async def _send_snapshot(self, *, reset: bool = False) -> None:
        """The present state; `reset` when it stands in for events that were pruned."""
        if self.seed:  # the seed app starts from now, without a snapshot
            self.last_sent = await in_db_thread(selectors.last_event_id)(user=self.user)
            return
        last_event_id, files = await _snapshot(self.user)
        self.last_sent = last_event_id
        await self.send_json(
            {
                "type": "snapshot",
                "file_id": None,
                "last_event_id": last_event_id,
                "files": files,
                "reset": reset,
            }
        )

    async def _replay(self) -> None:
        while True:
            pruned, messages = await _events_after(self.user, self.last_sent)
            if self.last_sent < pruned:
                # Events after the cursor were pruned (retention): the present
                # state, flagged, rather than a silent gap.
                await self._send_snapshot(reset=True)
                return
            if messages:
                self.last_sent = messages[-1]["id"]
                await self._send_events(messages)
            if len(messages) < REPLAY_BATCH:
                return

    async def _send_events(self, messages: list[dict[str, Any]]) -> None:
        """Durable events in cursor order, translated for a seed connection."""
        if self.seed:
            messages = [m for m in messages if is_seed_event(m)]
            if messages:
                messages = await in_db_thread(seed_messages)(messages, user=self.user)
        for message in messages:
            await self.send_json(message)


def _frame_problem(text: str | None) -> str | None:
    """What is wrong with a client frame, or None for a ping."""
    if text is None:
        return 'Binary frames are not accepted: send {"type": "ping"} as text.'
    # A character is at most 4 bytes in UTF-8: encode only what could be too long.
    if len(text) * 4 > MAX_FRAME_BYTES and len(text.encode()) > MAX_FRAME_BYTES:
        return f"Frame too large: at most {MAX_FRAME_BYTES} bytes."
    try:
        content = json.loads(text)
    except RecursionError:
        return "Not accepted: JSON nested too deeply."
    except ValueError:
        return 'Not JSON: send {"type": "ping"}.'
    if not (isinstance(content, dict) and content.get("type") == "ping"):
        return 'Unknown message: clients may send only {"type": "ping"}.'
    return None


def _cursor(values: list[str] | None) -> int | None:
    if not values:
        return None
    try:
        return max(0, int(values[0]))
    except ValueError:
        return 0


@in_db_thread
def _token_user(key: str) -> AbstractBaseUser | None:
    max_length = Token._meta.get_field("key").max_length
    if len(key) > max_length or "\x00" in key:  # PostgreSQL refuses NUL in text
        return None
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


@in_db_thread
def _snapshot(user: AbstractBaseUser) -> tuple[int, list[dict[str, Any]]]:
    last_event_id = selectors.last_event_id(user=user)
    return last_event_id, file_snapshot(user=user)


@in_db_thread
def _events_after(
    user: AbstractBaseUser, after: int
) -> tuple[int, list[dict[str, Any]]]:
    """The user's last event pruned, and the next batch of events after `after`."""
    events = selectors.event_list(user=user, after=after)[:REPLAY_BATCH]
    messages = [event.message for event in events]
    # Read after the events: a prune in between shows here, not as a silent gap.
    return events_pruned_through(user_id=user.pk), messages
