"""The canonical REST API under `/api/`: thin viewsets over the services."""

import logging

from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from dwellfi.schema import multipart

from .. import selectors, services
from ..models import File
from ..serializers import (
    AnomalySerializer,
    FileItemSerializer,
    FileSerializer,
    FileUploadSerializer,
    MetricSeriesQuerySerializer,
    MetricSeriesSerializer,
    RecordErrorSerializer,
    file_detail,
)
from .downloads import download_response
from .parsers import StrictFormParser, StrictMultiPartParser
from .throttles import UploadThrottle

logger = logging.getLogger(__name__)


ORDERING_FIELDS = [
    "created_at",
    "updated_at",
    "name",
    "size",
    "status",
    "record_count",
    "anomaly_count",
]


@extend_schema_view(
    list=extend_schema(
        description="The caller's files, newest first, paginated.",
        parameters=[
            OpenApiParameter(
                "status",
                str,
                enum=["", *File.Status.values],
                description="Only files in this status (empty: any).",
            ),
            OpenApiParameter(
                "kind",
                str,
                enum=["", *File.Kind.values],
                description="Only files of this kind (empty: any).",
            ),
            OpenApiParameter(
                "search", str, description="Part of the name, case-insensitive."
            ),
            OpenApiParameter(
                "ordering",
                str,
                description="Sort by "
                + ", ".join(f"`{name}`" for name in ORDERING_FIELDS)
                + "; `-` in front for descending, several comma-separated. "
                "Default `-created_at`.",
            ),
        ],
    ),
    retrieve=extend_schema(description="One of the caller's files."),
    destroy=extend_schema(
        description="Remove the file, its results and its stored bytes."
    ),
)
class FileViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Upload JSON files, follow their processing and read what it found."""

    serializer_class = FileSerializer
    filterset_fields = ["status", "kind"]
    search_fields = ["name"]
    ordering_fields = ORDERING_FIELDS
    ordering = ["-created_at", "-id"]
    http_method_names = ["get", "post", "put", "delete", "head", "options"]
    # The only request bodies here are uploads.
    parser_classes = [StrictMultiPartParser, StrictFormParser]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return File.objects.none()
        return selectors.file_list(user=self.request.user)

    def get_serializer_class(self):
        # Up to 500 a page: each item bounded, the servers list only for one file.
        return FileItemSerializer if self.action == "list" else FileSerializer

    def get_throttles(self):
        if self.action in ("create", "update", "reprocess"):
            return [UploadThrottle()]
        return super().get_throttles()

    @extend_schema(
        request=multipart(FileUploadSerializer, "file"),
        responses={201: FileSerializer},
    )
    def create(self, request: Request) -> Response:
        """Store an uploaded file and queue it for processing."""
        upload = FileUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        file = services.file_create(
            owner=request.user,
            upload=upload.validated_data["file"],
            name=upload.validated_data.get("name"),
        )
        return Response(file_detail(file), status=status.HTTP_201_CREATED)

    @extend_schema(
        request=multipart(FileUploadSerializer, "file"),
        responses={200: FileSerializer},
    )
    def update(self, request: Request, pk: str | None = None) -> Response:
        """Replace the file's content and process it again."""
        file = self.get_object()
        upload = FileUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        file = services.file_update(
            file=file,
            by=request.user,
            upload=upload.validated_data["file"],
            name=upload.validated_data.get("name", upload.validated_data["file"].name),
        )
        return Response(file_detail(file))

    def perform_destroy(self, instance: File) -> None:
        services.file_delete(file=instance)

    @extend_schema(request=None, responses={202: FileSerializer})
    @action(detail=True, methods=["post"])
    def reprocess(self, request: Request, pk: str | None = None) -> Response:
        """Process the stored file again."""
        file = services.file_reprocess(file=self.get_object(), by=request.user)
        return Response(file_detail(file), status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=AnomalySerializer(many=True))
    @action(detail=True, filter_backends=[])
    def anomalies(self, request: Request, pk: str | None = None) -> Response:
        """The anomalies found, in record order (paginated)."""
        return self._paginated(
            selectors.anomaly_list(file=self.get_object()), AnomalySerializer
        )

    @extend_schema(responses=RecordErrorSerializer(many=True))
    @action(detail=True, filter_backends=[])
    def errors(self, request: Request, pk: str | None = None) -> Response:
        """The records validation skipped, with their JSON Pointers (paginated)."""
        return self._paginated(
            selectors.record_error_list(file=self.get_object()), RecordErrorSerializer
        )

    @extend_schema(
        parameters=[MetricSeriesQuerySerializer],
        responses=MetricSeriesSerializer,
    )
    @action(detail=True, filter_backends=[])
    def metrics(self, request: Request, pk: str | None = None) -> Response:
        """A metric's series, downsampled to at most `points` min/max/mean buckets."""
        file = self.get_object()
        query = MetricSeriesQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(selectors.metric_series(file=file, **query.validated_data))

    @extend_schema(
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="The bytes as uploaded (not necessarily valid JSON).",
            )
        },
        parameters=[
            OpenApiParameter(
                "Content-Disposition",
                str,
                OpenApiParameter.HEADER,
                response=[200],
                description='`attachment; filename="…"` with the file\'s name.',
            )
        ],
    )
    @action(detail=True, filter_backends=[])
    def download(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        """The original bytes, as an attachment."""
        return download_response(request._request, self.get_object())

    def _paginated(self, queryset, serializer_class) -> Response:
        page = self.paginator.paginate_queryset(queryset, self.request, view=self)
        return self.paginator.get_paginated_response(
            serializer_class(page, many=True).data
        )
