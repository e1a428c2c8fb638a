"""The seed system's routes, with its request and response shapes, for old clients.

They answer what the seed's FastAPI answered: 200 (not 201) on upload, the seed's
fields and types. One file (detail, upload and update answers) carries up to 500
of its records in `meta_data.metrics` for the seed app's charts, and its servers
list (capped); the plain list leaves both out, so each item stays small however
many files there are (the app's home list never reads `meta_data`).
"""

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dwellfi.schema import multipart

from .. import selectors, services
from ..models import File
from ..serializers import SeedFileSerializer, SeedUpdateSerializer, SeedUploadSerializer
from .parsers import StrictFormParser, StrictMultiPartParser
from .throttles import UploadThrottle

FILE_ID = OpenApiParameter(
    "id", int, OpenApiParameter.PATH, description="The file's id."
)


def _own_file(request: Request, pk: int) -> File:
    file = selectors.file_get(user=request.user, file_id=pk)
    if file is None:
        raise Http404
    return file


def _one_file(file: File) -> Response:
    """One file in the seed's shape, with the records its app charts."""
    records = selectors.metric_record_sample(file=file)
    return Response(SeedFileSerializer(file, context={"records": records}).data)


class SeedUploadView(APIView):
    """`POST /files/uploadfile/`: multipart `file`, optional `file_data_create_form`."""

    parser_classes = [StrictMultiPartParser, StrictFormParser]
    throttle_classes = [UploadThrottle]

    @extend_schema(
        request=multipart(SeedUploadSerializer, "file"),
        responses={200: SeedFileSerializer},
    )
    def post(self, request: Request) -> Response:
        form = SeedUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        details = form.validated_data.get("file_data_create_form", {})
        file = services.file_create(
            owner=request.user,
            upload=form.validated_data["file"],
            name=details.get("filename"),
            declared_type=details.get("type", ""),
        )
        return _one_file(file)


class SeedFileListView(APIView):
    """`GET /files/files/`: the caller's files as a plain list."""

    @extend_schema(responses=SeedFileSerializer(many=True))
    def get(self, request: Request) -> Response:
        files = selectors.file_list(user=request.user)
        return Response(SeedFileSerializer(files, many=True).data)


class SeedFileDetailView(APIView):
    """`GET /files/files/{id}` and `GET /files/{id}`: one of the caller's files."""

    @extend_schema(parameters=[FILE_ID], responses=SeedFileSerializer)
    def get(self, request: Request, pk: int) -> Response:
        return _one_file(_own_file(request, pk))


class SeedUpdateView(APIView):
    """`PUT /files/updatefile/{id}`: optional `file` and `file_update_form`."""

    parser_classes = [StrictMultiPartParser, StrictFormParser]
    throttle_classes = [UploadThrottle]

    @extend_schema(
        parameters=[FILE_ID],
        request=multipart(SeedUpdateSerializer, "file"),
        responses={200: SeedFileSerializer},
    )
    def put(self, request: Request, pk: int) -> Response:
        file = _own_file(request, pk)
        form = SeedUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        details = form.validated_data.get("file_update_form", {})
        file = services.file_update(
            file=file,
            by=request.user,
            upload=form.validated_data.get("file"),
            name=details.get("filename"),
            declared_type=details.get("type"),
        )
        return _one_file(file)
