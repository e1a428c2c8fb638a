"""Credentials that stop being valid close the sockets they opened.

A socket is authenticated once, when it opens; these handlers close it when its
token or its user is deleted, the user deactivated, or its session signed out. The
close is sent after the change commits, so a rolled-back deletion closes nothing.
"""

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token

from .sockets import sockets_close


def _on_commit(**close: Any) -> None:
    transaction.on_commit(lambda: sockets_close(**close))


@receiver(post_delete, sender=Token, dispatch_uid="close_token_sockets")
def token_deleted(sender: type, instance: Token, **kwargs: Any) -> None:
    """The sockets opened with this token close (the user's others stay)."""
    _on_commit(user_id=instance.user_id, token=instance.key)


@receiver(post_delete, sender=get_user_model(), dispatch_uid="close_user_sockets")
def user_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    """Every socket of a deleted user closes."""
    _on_commit(user_id=instance.pk)


@receiver(post_save, sender=get_user_model(), dispatch_uid="close_inactive_sockets")
def user_saved(sender: type, instance: Any, **kwargs: Any) -> None:
    """Every socket of a deactivated user closes (a token of theirs is refused too)."""
    if not instance.is_active:
        _on_commit(user_id=instance.pk)


@receiver(user_logged_out, dispatch_uid="close_session_sockets")
def signed_out(sender: type, request: Any, user: Any, **kwargs: Any) -> None:
    """The sockets opened with a session that signed out close."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is not None and session_key:
        _on_commit(user_id=user.pk, session=session_key)
