"""The Redis cache, failing open: Redis being down must not stop uploads.

The cache holds the upload throttle's counters. When Redis cannot be reached a read
answers the default and a write is dropped (so the throttle lets the request
through), and for a few seconds this process does not try again: a request waits
for one connect timeout at most, not one per cache call.
"""

import logging
import time
from functools import partial
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
PAUSE_AFTER_FAILURE = 5.0


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
