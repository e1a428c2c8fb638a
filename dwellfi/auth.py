"""Token authentication with the token's lookup kept a few seconds per process.

Every API request of a client carries its token, and DRF looks it up (with its
user) in the database each time: one query a request, the most common one the
service runs. Here a found token is kept in this process for
DWELLFI_TOKEN_CACHE_SECONDS (0: looked up every time). Deleting the token, or
saving or deleting its user (deactivating them, say), drops it from this
process's cache at once; another web process still accepts it until its copy
expires, that many seconds at most. A token that is not found is never kept.
"""

import threading
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

# Beyond this many tokens the cache starts again empty: its memory stays bounded.
MOST_KEPT = 10_000

_kept: dict[str, tuple[float, Token]] = {}
_lock = threading.Lock()


class CachedTokenAuthentication(TokenAuthentication):
    """DRF's `Authorization: Token KEY`, its lookups kept a few seconds."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        seconds = settings.DWELLFI_TOKEN_CACHE_SECONDS
        if seconds <= 0:
            return super().authenticate_credentials(key)
        now = time.monotonic()
        kept = _kept.get(key)
        if kept is not None and kept[0] > now:
            token = kept[1]
            if not token.user.is_active:
                raise AuthenticationFailed("User inactive or deleted.")
            return token.user, token
        user, token = super().authenticate_credentials(key)
        with _lock:
            if len(_kept) >= MOST_KEPT:
                _kept.clear()
            _kept[key] = (now + seconds, token)
        return user, token


def forget_user(user_id: int) -> None:
    """Drop every kept token of a user from this process's cache."""
    with _lock:
        for key in [k for k, (_, t) in _kept.items() if t.user_id == user_id]:
            del _kept[key]


@receiver(post_delete, sender=Token, dispatch_uid="forget_deleted_token")
def _token_deleted(sender: type, instance: Token, **kwargs: Any) -> None:
    _kept.pop(instance.key, None)


@receiver(post_save, sender=get_user_model(), dispatch_uid="forget_saved_user")
@receiver(post_delete, sender=get_user_model(), dispatch_uid="forget_deleted_user")
def _user_changed(sender: type, instance: Any, **kwargs: Any) -> None:
    forget_user(instance.pk)
