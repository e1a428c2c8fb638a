"""How durable events look on the wire (`GET /api/events/`, the socket's replay)."""

from typing import Any

from rest_framework import serializers

from .filedata import FILE_STATUSES, FileItemSerializer
from .models import Event
from .publisher import EVENT_NAMES

# The event types that are recorded (every type but the live-only `file.progress`).
DURABLE_EVENT_TYPES = [name for name in EVENT_NAMES if name != "file.progress"]


class FileAnomalySerializer(serializers.Serializer):
    """The seed's `file_anomaly`: the error text, or the anomalies as text."""

    file_id = serializers.IntegerField()
    data = serializers.CharField()


class EventSerializer(serializers.Serializer):
    """A durable event exactly as the WebSocket sent it.

    The fields document the message; the message itself is what is returned.
    """

    id = serializers.IntegerField(help_text="The user's cursor: pass it as `after`.")
    type = serializers.ChoiceField(choices=DURABLE_EVENT_TYPES)
    file_id = serializers.IntegerField(allow_null=True)
    event_name = serializers.ChoiceField(
        choices=sorted({EVENT_NAMES[t] for t in DURABLE_EVENT_TYPES}),
        help_text="The seed's name.",
    )
    is_major = serializers.BooleanField(help_text="True for outcomes.")
    status = serializers.ChoiceField(choices=FILE_STATUSES)
    progress = serializers.FloatField(min_value=0, max_value=1)
    file = FileItemSerializer(
        help_text="The bounded file resource when the event was recorded."
    )
    status_message = serializers.CharField()
    file_anomaly = FileAnomalySerializer(
        required=False, help_text="`file.failed` and `file.anomalies` only."
    )
    title = serializers.CharField(required=False, help_text="`notification` only.")
    description = serializers.CharField(
        required=False, help_text="`notification` only."
    )
    user_id = serializers.IntegerField(required=False, help_text="`notification` only.")

    def to_representation(self, event: Event) -> dict[str, Any]:
        return event.message


class EventsGoneSerializer(serializers.Serializer):
    """410 from the events list: the events after the cursor were pruned."""

    detail = serializers.CharField()
    last_event_id = serializers.IntegerField(
        help_text="The caller's newest event: continue after it, once the present "
        "state is read."
    )
