"""Server-rendered pages: the upload dashboard, a file's results, the health check."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from redis import Redis

from . import selectors
from .models import METRICS
from .serializers import FileSerializer

PAGE_SIZE = 50


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The dashboard: upload files and watch them move through processing live."""
    files = Paginator(selectors.file_list(user=request.user), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "files/home.html",
        {
            "files": files,
            "files_json": FileSerializer(files.object_list, many=True).data,
            "last_event_id": selectors.last_event_id(user=request.user),
            "max_upload_bytes": settings.DWELLFI_MAX_UPLOAD_BYTES,
        },
    )


@login_required
def file_page(request: HttpRequest, pk: int) -> HttpResponse:
    """One file: its summary, anomalies and validation errors."""
    file = selectors.file_get(user=request.user, file_id=pk)
    if file is None:
        raise Http404("No such file.")
    anomalies = Paginator(selectors.anomaly_list(file=file), PAGE_SIZE).get_page(
        request.GET.get("anomalies")
    )
    errors = Paginator(selectors.record_error_list(file=file), PAGE_SIZE).get_page(
        request.GET.get("errors")
    )
    return render(
        request,
        "files/detail.html",
        {
            "file": file,
            "file_json": FileSerializer(file).data,
            "anomalies": anomalies,
            "errors": errors,
            "metrics": METRICS,
            "last_event_id": selectors.last_event_id(user=request.user),
        },
    )


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Database and Redis (the broker and the channel layer) reachability."""
    checks = {}
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure is the answer, not an error
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        Redis.from_url(settings.REDIS_URL, socket_timeout=2).ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "error", **checks},
        status=200 if healthy else 503,
    )
