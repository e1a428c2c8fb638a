"""The events API (`GET /api/events/`): catch-up without a socket."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from . import selectors
from .models import Event
from .retention import events_pruned_through
from .serializers import EventSerializer, EventsGoneSerializer


class EventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The caller's durable events after a cursor: catch-up without a socket."""

    serializer_class = EventSerializer
    filter_backends = []

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "after",
                int,
                description="Cursor: only events with a larger `id` (default 0).",
            )
        ],
        responses={
            200: EventSerializer(many=True),
            410: OpenApiResponse(
                EventsGoneSerializer,
                description="Events after `after` were pruned (kept "
                "`DWELLFI_EVENT_RETENTION_DAYS`): read the present state "
                "(`GET /api/files/`), then continue after `last_event_id`.",
            ),
        },
    )
    def list(self, request: Request) -> Response:
        """The caller's durable events after `after`, oldest first, exactly as the
        WebSocket sent them."""
        after = self._after()
        if after < events_pruned_through(user_id=request.user.pk):
            return Response(
                {
                    "detail": f"Events after {after} are no longer kept: read your "
                    "files again, then continue after last_event_id.",
                    "last_event_id": selectors.last_event_id(user=request.user),
                },
                status=status.HTTP_410_GONE,
            )
        return super().list(request)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Event.objects.none()
        return selectors.event_list(user=self.request.user, after=self._after())

    def _after(self) -> int:
        try:
            return max(0, int(self.request.query_params.get("after", 0)))
        except ValueError as exc:
            raise serializers.ValidationError({"after": ["A whole number."]}) from exc
