"""Reads of the durable events and the users' cursors."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from .models import Event, EventCursor


def event_list(*, user: AbstractBaseUser, after: int = 0) -> QuerySet[Event]:
    """The user's durable events after a cursor, oldest first."""
    return Event.objects.filter(user=user, seq__gt=after).order_by("seq")


def last_event_id(*, user: AbstractBaseUser) -> int:
    """The user's newest cursor value (0 before any event).

    Read from the cursor, not the events: those may have been pruned or deleted
    with their file, and a cursor handed out must never go back.
    """
    return (
        EventCursor.objects.filter(user=user).values_list("last_seq", flat=True).first()
        or 0
    )
