"""Durable events are kept DWELLFI_EVENT_RETENTION_DAYS, then pruned.

Pruning records, per user, the last event it deleted (`EventCursor.pruned_seq`): a
client whose cursor is older than that has missed events that no longer exist,
and is told so (a `snapshot` with `reset: true` on the socket, a 410 from
`GET /api/events/`) instead of being given a silent gap. Events deleted with their
file are no such gap: the file is gone, and its `file.deleted` event is kept.
"""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from .models import Event, EventCursor


def events_prune() -> int:
    """Delete the durable events older than the retention period; how many."""
    days = settings.DWELLFI_EVENT_RETENTION_DAYS
    if days <= 0:
        return 0
    before = timezone.now() - timedelta(days=days)
    horizons = (
        Event.objects.filter(created_at__lt=before)
        .order_by()
        .values("user_id")
        .annotate(last=Max("seq"))
        .values_list("user_id", "last")
    )
    removed = 0
    for user_id, last in list(horizons):
        # One user at a time, under the cursor row lock that orders their events.
        with transaction.atomic():
            cursor, _ = EventCursor.objects.select_for_update().get_or_create(
                user_id=user_id
            )
            if cursor.pruned_seq < last:
                cursor.pruned_seq = last
                cursor.save(update_fields=["pruned_seq"])
            removed += Event.objects.filter(user_id=user_id, seq__lte=last).delete()[0]
    return removed


def events_pruned_through(*, user_id: int) -> int:
    """The user's last event deleted by retention (0 when none was)."""
    return (
        EventCursor.objects.filter(user_id=user_id)
        .values_list("pruned_seq", flat=True)
        .first()
        or 0
    )
