"""The Redis cache, failing open: Redis being down must not stop uploads.

The cache holds the upload throttle's windows. When Redis cannot be reached a read
answers the default and a write is dropped (so the throttle lets the request
through), and for a few seconds this process does not try again: a request waits
for one connect timeout at most, not one per cache call.
"""

import logging
import time
from functools import partial
from typing import Any
from uuid import uuid4

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
PAUSE_AFTER_FAILURE = 5.0

# A sliding window of hits in one sorted set, checked and updated in one step: no
# two requests can both see room for one. The time is Redis' own, so every web
# process counts with the same clock. Returns 0 when the hit is counted, else the
# milliseconds until the oldest hit in the window leaves it.
SLIDING_WINDOW = """
local key, member = KEYS[1], ARGV[3]
local limit, period_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - period_ms)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now_ms, member)
  redis.call('PEXPIRE', key, period_ms)
  return 0
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + period_ms - now_ms)
"""


class FailOpenRedisCache(RedisCache):
    """Django's RedisCache whose connection failures read as misses."""

    # When this process may try Redis again; shared by all its threads.
    _retry_at = 0.0

    def _guard(self, call: partial, default: Any) -> Any:
        if time.monotonic() < FailOpenRedisCache._retry_at:
            return default
        try:
            return call()
        except UNREACHABLE as exc:
            FailOpenRedisCache._retry_at = time.monotonic() + PAUSE_AFTER_FAILURE
            logger.warning("cache unreachable, failing open: %r", exc)
            return default

    def get(self, key, default=None, version=None):
        return self._guard(partial(super().get, key, default, version), default)

    def get_many(self, keys, version=None):
        return self._guard(partial(super().get_many, keys, version), {})

    def has_key(self, key, version=None):
        return self._guard(partial(super().has_key, key, version), False)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        self._guard(partial(super().set, key, value, timeout, version), None)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guard(partial(super().add, key, value, timeout, version), False)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guard(partial(super().touch, key, timeout, version), False)

    def delete(self, key, version=None):
        return self._guard(partial(super().delete, key, version), False)

    def hit_window(self, key: str, *, limit: int, period: float) -> float | None:
        """Count a hit in the sliding window `key` if it has room: None, or the
        seconds until it has room again (the hit is then not counted)."""
        key = self.make_and_validate_key(key)
        client = self._cache.get_client(key, write=True)
        script = client.register_script(SLIDING_WINDOW)
        wait_ms = self._guard(
            partial(script, keys=[key], args=[limit, int(period * 1000), uuid4().hex]),
            0,
        )
        return wait_ms / 1000 if wait_ms else None
