"""Every API error as JSON `{"detail": ...}` with the right status.

Django refuses malformed requests by raising `SuspiciousOperation` (too many fields
or file parts, form fields over DATA_UPLOAD_MAX_MEMORY_SIZE, ...). Outside DRF its
handler turns them into a 400 page (`bad_request` below); inside a DRF view they
reach `exception_handler`, which answers them like every other client error instead
of as an unknown server error.
"""

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import OperationalError, connection
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponsePermanentRedirect,
    JsonResponse,
)
from django.shortcuts import render
from django.urls import is_valid_path
from django.views.decorators.csrf import csrf_exempt
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..exceptions import FileGone, QuotaExceeded, UploadRefused, UploadTooLarge

logger = logging.getLogger(__name__)

UNKNOWN_API_PATH = "api-not-found"


class RequestTooLarge(APIException):
    """The form fields of a request are over Django's DATA_UPLOAD_MAX_MEMORY_SIZE."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def refusal(exc: SuspiciousOperation) -> APIException:
    """The client error a refusal of Django's stands for, said in plain words."""
    if isinstance(exc, RequestDataTooBig):
        return RequestTooLarge(
            "The form fields are larger than the limit of "
            f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes (files do not count)."
        )
    if isinstance(exc, TooManyFieldsSent):
        return ParseError(
            f"More than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields or parameters."
        )
    if isinstance(exc, TooManyFilesSent):
        return ParseError(f"More than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files.")
    return ParseError("Malformed request.")


class DatabaseBusy(APIException):
    """SQLite's one write lock stayed taken past its timeout (a long run holds it)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "database_busy"
    default_detail = (
        "The database is busy writing another file's results; try again shortly."
    )


def _sqlite_locked(exc: Exception) -> bool:
    return (
        isinstance(exc, OperationalError)
        and connection.vendor == "sqlite"
        and "database is locked" in str(exc)
    )


# A per-user limit passed: too many stored bytes is too large, too many files (or
# too many processing at once) too many requests.
QUOTA_STATUS = {"bytes": 413, "files": 429, "processing": 429}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with field errors summed up in `detail` and kept in `errors`."""
    if isinstance(exc, FileGone):
        exc = Http404()  # deleted while the request ran: as if it never was
    if isinstance(exc, QuotaExceeded):
        return Response({"detail": str(exc)}, status=QUOTA_STATUS[exc.limit])
    if isinstance(exc, UploadTooLarge):
        return Response(
            {"detail": str(exc)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
        )
    if isinstance(exc, UploadRefused):
        exc = ValidationError({"file": [str(exc)]})  # a field error, as DRF's
    if _sqlite_locked(exc):
        response = drf_exception_handler(DatabaseBusy(), context)
        response["Retry-After"] = "10"
        return response
    if isinstance(exc, SuspiciousOperation):
        # Logged as Django logs it outside DRF, but as the client's error: one
        # line, no traceback.
        logging.getLogger(f"django.security.{type(exc).__name__}").warning(str(exc))
        exc = refusal(exc)
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


def wants_json(request: HttpRequest) -> bool:
    """Whether an error for this request is answered as JSON (API) or as a page."""
    return request.path.startswith(("/api/", "/files/")) or (
        "application/json" in request.headers.get("Accept", "")
    )


def bad_request(
    request: HttpRequest,
    exception: Exception | None = None,
    *,
    detail: str = "Malformed request.",
) -> HttpResponse:
    """400: JSON for API clients, the friendly page for browsers."""
    if isinstance(exception, SuspiciousOperation):
        detail = str(refusal(exception).detail)
    if wants_json(request):
        return JsonResponse({"detail": detail}, status=400)
    return render(request, "400.html", {"detail": detail}, status=400)


def locked_out(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """429 after too many failed sign-ins (django-axes' lockout response)."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    detail = (
        f"{settings.AXES_FAILURE_LIMIT} wrong passwords in a row: signing in with "
        f"this username from here is paused for {round(seconds / 60)} minutes. "
        "An administrator can lift the pause sooner."
    )
    if wants_json(request):
        response = JsonResponse({"detail": detail}, status=429)
    else:
        context = {"detail": detail}
        response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(seconds)
    return response


def not_found(request: HttpRequest, exception: Exception | None = None):
    """404: JSON for API clients, the friendly page for browsers."""
    from django.views.defaults import page_not_found

    if wants_json(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)


@csrf_exempt  # it changes nothing: a write is refused the same with or without
def unknown_api_path(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Any other path under /api/ or /files/: a JSON 404, with DEBUG on too.

    (Django answers an unmatched path with its HTML debug page when DEBUG is on.)
    Matching every path here also takes the place of APPEND_SLASH for the API: a
    GET is redirected to the path with a slash as before; a write is told to add
    it, where a redirect would lose its body (and Django raises with DEBUG on).
    """
    path = request.path_info
    if not path.endswith("/"):
        match = is_valid_path(f"{path}/", getattr(request, "urlconf", None))
        if match and match.url_name != UNKNOWN_API_PATH:
            if request.method in ("GET", "HEAD"):
                return HttpResponsePermanentRedirect(
                    request.get_full_path(force_append_slash=True)
                )
            return JsonResponse(
                {"detail": f"Not found. The path ends with a slash: {request.path}/"},
                status=404,
            )
    return JsonResponse({"detail": "Not found."}, status=404)


def server_error(request: HttpRequest):
    """500: JSON for API clients, the friendly page for browsers."""
    from django.views.defaults import server_error as html_server_error

    if wants_json(request):
        return JsonResponse({"detail": "Internal server error."}, status=500)
    return html_server_error(request)
