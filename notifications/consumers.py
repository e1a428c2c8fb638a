"""The notification WebSocket: authenticate, join the user's group, replay, forward."""

from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.security.websocket import AllowedHostsOriginValidator
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from rest_framework.authtoken.models import Token

from files import selectors
from files.serializers import FileItemSerializer

from .publisher import user_group
from .seed import is_seed_event, seed_messages, speaks_seed

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
REPLAY_BATCH = 500


class EventConsumer(AsyncJsonWebsocketConsumer):
    """Sends a user every event about their files, catching up from the database first.

    Connect with the session cookie (browsers; the Origin must be an allowed host)
    or with `?token=KEY` (clients). `?after=ID` replays every durable event after ID;
    without it the first message is a `snapshot`. Live events that arrive out of
    sequence make the consumer fill the gap from the database, so a message the
    channel layer dropped is still delivered when the next one comes, or at the
    client's next ping.

    A query that names the seed's `user_id` makes it speak the seed app's protocol
    (`notifications.seed`): the same events, cursor and replay, but only those the
    app can parse, translated, and no snapshot or pong.
    """

    async def connect(self) -> None:
        query = self.scope.get("query_string", b"").decode("latin-1")
        params = parse_qs(query)
        self.seed = speaks_seed(query)
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

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients may send `{"type": "ping"}`; anything else is ignored.

        A ping first catches up from the database: a user's last events may have
        been dropped by the channel layer (Redis restarted, a subscriber it cut
        off), and with no later event to reveal the gap only this finds them.
        """
        if isinstance(content, dict) and content.get("type") == "ping":
            await self._replay()
            if not self.seed:
                await self.send_json({"type": "pong", "file_id": None})

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
        """The user; None when not authenticated; False for a foreign Origin."""
        if "token" in params:
            return await _token_user(params["token"][0])
        user = self.scope.get("user") or AnonymousUser()
        if not user.is_authenticated:
            return None
        return user if _origin_allowed(self.scope) else False

    async def _send_snapshot(self) -> None:
        if self.seed:  # the seed app starts from now, without a snapshot
            self.last_sent = await database_sync_to_async(selectors.last_event_id)(
                user=self.user
            )
            return
        last_event_id, files = await _snapshot(self.user)
        self.last_sent = last_event_id
        await self.send_json(
            {
                "type": "snapshot",
                "file_id": None,
                "last_event_id": last_event_id,
                "files": files,
            }
        )

    async def _replay(self) -> None:
        while True:
            messages = await _events_after(self.user, self.last_sent)
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
                messages = await database_sync_to_async(seed_messages)(
                    messages, user=self.user
                )
        for message in messages:
            await self.send_json(message)


def _cursor(values: list[str] | None) -> int | None:
    if not values:
        return None
    try:
        return max(0, int(values[0]))
    except ValueError:
        return 0


def _origin_allowed(scope: dict[str, Any]) -> bool:
    """The same rule as Channels' AllowedHostsOriginValidator (ALLOWED_HOSTS)."""
    origin = dict(scope.get("headers", [])).get(b"origin")
    if origin is None:
        return False
    validator = AllowedHostsOriginValidator(None)
    return validator.valid_origin(urlparse(origin.decode("latin-1").lower()))


@database_sync_to_async
def _token_user(key: str) -> AbstractBaseUser | None:
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


@database_sync_to_async
def _snapshot(user: AbstractBaseUser) -> tuple[int, list[dict[str, Any]]]:
    last_event_id = selectors.last_event_id(user=user)
    files = FileItemSerializer(selectors.file_snapshot(user=user), many=True).data
    return last_event_id, [dict(f) for f in files]


@database_sync_to_async
def _events_after(user: AbstractBaseUser, after: int) -> list[dict[str, Any]]:
    events = selectors.event_list(user=user, after=after)[:REPLAY_BATCH]
    return [event.message for event in events]
