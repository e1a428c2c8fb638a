"""Durable per-user events: the source of truth behind the WebSocket."""

from django.conf import settings
from django.db import models


class Event(models.Model):
    """One message a user was (or will be) sent; `seq` is the user's cursor."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="events"
    )
    seq = models.PositiveBigIntegerField(help_text="Increases by one for each user.")
    type = models.CharField(max_length=32)
    file_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    message = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["user", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["user", "seq"], name="event_user_seq"),
        ]
        # The retention job finds old events by age.
        indexes = [models.Index(fields=["created_at"], name="event_created")]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq} for user {self.user_id}"


class EventCursor(models.Model):
    """The last `seq` handed out per user.

    Incrementing it locks the row until the transaction ends, so a user's events
    commit in the order of their numbers and a reader never skips one that commits late.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True
    )
    last_seq = models.PositiveBigIntegerField(default=0)
    # A default in the database too: `publisher.publish` inserts rows in SQL.
    pruned_seq = models.PositiveBigIntegerField(
        default=0,
        db_default=0,
        help_text="Every event up to this one was deleted by the retention job: a "
        "client whose cursor is older has missed some.",
    )

    def __str__(self) -> str:
        return f"user {self.user_id} at {self.last_seq}"
