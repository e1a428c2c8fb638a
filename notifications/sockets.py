"""Each user's open sockets, across every web process, and closing them from anywhere.

Every open socket is a member of a sorted set per user in Redis (REDIS_URL, under
the cache's key prefix), scored by when it opened. A new socket adds itself and, in
the same script, takes out the oldest beyond DWELLFI_MAX_SOCKETS_PER_USER; its
consumer tells them to close through the channel layer, whichever process holds
them. A socket that vanished without a disconnect (its daphne killed) is older than
any opened since, so it is the first taken out, and every entry expires after a day
(daphne closes a socket older than that, its `--websocket_timeout`).

Redis being unreachable does not refuse a socket: it is let in uncounted. A limit
of 0 counts nothing.
"""

import hashlib
import logging
import time

from django.conf import settings
from django.core.cache import cache
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .publisher import send_to_user

logger = logging.getLogger(__name__)

STALE_SECONDS = 86400
# KEYS[1] the user's set; ARGV: now, the limit, STALE_SECONDS, the new member.
# Returns the members taken out, oldest first; never the new one.
_REGISTER = """
local now, limit, stale = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - stale)
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], stale)
local excess = redis.call('ZCARD', KEYS[1]) - limit
local out = {}
if excess <= 0 then return out end
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if #out == excess then break end
  if member ~= ARGV[4] then
    out[#out + 1] = member
    redis.call('ZREM', KEYS[1], member)
  end
end
return out
"""


def _key(user_id: int) -> str:
    return cache.make_key(f"sockets:{user_id}")


def _client() -> Redis:
    # One short-lived connection per call: sockets open and close far more rarely
    # than messages flow, and a client bound to one event loop cannot outlive it.
    return Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
    )


async def socket_register(*, user_id: int, channel_name: str) -> list[str]:
    """Count a new socket of the user; the channels of those it displaces."""
    if settings.DWELLFI_MAX_SOCKETS_PER_USER <= 0:  # no limit
        return []
    try:
        async with _client() as redis:
            displaced = await redis.register_script(_REGISTER)(
                keys=[_key(user_id)],
                args=[
                    time.time(),
                    settings.DWELLFI_MAX_SOCKETS_PER_USER,
                    STALE_SECONDS,
                    channel_name,
                ],
            )
    except (RedisError, OSError) as exc:
        logger.warning("socket registry unreachable, socket not counted: %r", exc)
        return []
    return [name.decode() for name in displaced]


async def socket_unregister(*, user_id: int, channel_name: str) -> None:
    """Stop counting a socket that closed."""
    if settings.DWELLFI_MAX_SOCKETS_PER_USER <= 0:
        return
    try:
        async with _client() as redis:
            await redis.zrem(_key(user_id), channel_name)
    except (RedisError, OSError) as exc:
        logger.warning("socket registry unreachable: %r", exc)


def credential_digest(secret: str) -> str:
    """What identifies a token or session in a close message (never the secret)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def sockets_close(
    *, user_id: int, token: str | None = None, session: str | None = None
) -> None:
    """Close the user's open sockets: all, or those opened with one token or session.

    For credentials that stopped being valid; call after the change commits.
    """
    event = {"type": "sockets.close"}
    if token is not None:
        event["token"] = credential_digest(token)
    if session is not None:
        event["session"] = credential_digest(session)
    send_to_user(user_id, event)
