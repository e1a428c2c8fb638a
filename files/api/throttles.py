"""The upload throttle: a sliding window per user in Redis, checked atomically."""

from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView


class UploadThrottle(UserRateThrottle):
    """Uploads per user (DWELLFI_UPLOAD_RATE), counted across every web process.

    DRF's throttle reads the user's history, decides, then writes it back, so
    concurrent uploads all read the same history and all pass (8 at once left a
    history of 6). Here the check and the count are one Redis script
    (`FailOpenRedisCache.hit_window`): exactly the rate passes, however many
    arrive at once. With Redis unreachable, uploads pass (the cache fails open).
    """

    scope = "uploads"
    # Not DRF's key: its history is a pickled list, the window a sorted set.
    cache_format = "throttle_window_%(scope)s_%(ident)s"

    def allow_request(self, request: Request, view: APIView) -> bool:
        self.retry_after: float | None = None
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        self.retry_after = cache.hit_window(
            key, limit=self.num_requests, period=self.duration
        )
        return self.retry_after is None

    def wait(self) -> float | None:
        """Seconds until the next upload would pass (the `Retry-After`)."""
        return self.retry_after
