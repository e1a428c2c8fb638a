"""Every API error as JSON `{"detail": ...}` with the right status."""

import logging
from typing import Any

from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..exceptions import FileGone, QuotaExceeded

logger = logging.getLogger(__name__)

# A per-user limit passed: too many stored bytes is too large, too many files (or
# too many processing at once) too many requests.
QUOTA_STATUS = {"bytes": 413, "files": 429, "processing": 429}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with field errors summed up in `detail` and kept in `errors`."""
    if isinstance(exc, FileGone):
        exc = Http404()  # deleted while the request ran: as if it never was
    if isinstance(exc, QuotaExceeded):
        return Response({"detail": str(exc)}, status=QUOTA_STATUS[exc.limit])
    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled error in %s", context.get("view"), exc_info=exc)
        return Response(
            {"detail": "Internal server error."},
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, Http404):
        # DRF names the model ("No File matches..."); say only what a client needs.
        response.data = {"detail": "Not found."}
    data = response.data
    if not (isinstance(data, dict) and "detail" in data):
        # `errors` is always field -> messages; errors of no field are DRF's
        # `non_field_errors`.
        errors = data if isinstance(data, dict) else {"non_field_errors": data}
        response.data = {"detail": first_message(data), "errors": errors}
    return response


def first_message(data: Any, field: str = "") -> str:
    """The first message of DRF error data, prefixed with its field's name."""
    if isinstance(data, dict):
        for key, value in data.items():
            name = key if key != "non_field_errors" else ""
            return first_message(value, name)
    if isinstance(data, list) and data:
        return first_message(data[0], field)
    return f"{field}: {data}" if field else str(data)


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/files/")) or (
        "application/json" in request.headers.get("Accept", "")
    )


def not_found(request: HttpRequest, exception: Exception | None = None):
    """404: JSON for API clients, the friendly page for browsers."""
    from django.views.defaults import page_not_found

    if _wants_json(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)


def server_error(request: HttpRequest):
    """500: JSON for API clients, the friendly page for browsers."""
    from django.views.defaults import server_error as html_server_error

    if _wants_json(request):
        return JsonResponse({"detail": "Internal server error."}, status=500)
    return html_server_error(request)
