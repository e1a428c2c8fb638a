"""Server-rendered pages: the upload dashboard and a file's results.

Each piece of a page is rendered here and only here: when an event changes a file,
the page fetches the piece again with htmx and morphs it in (a dashboard row from
`file_row`, the file page's article from `file_page` itself), so the templates are
the one renderer of what a page shows.
"""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django_htmx.middleware import HtmxDetails

from notifications.selectors import last_event_id

from . import selectors
from .models import METRICS, File
from .serializers import summary_capped


class HtmxHttpRequest(HttpRequest):
    """A request through django-htmx's middleware (for type checkers)."""

    htmx: HtmxDetails


PAGE_SIZE = 50


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The dashboard: upload files, find them, watch them being processed."""
    filters = {
        "status": request.GET.get("status", ""),
        "kind": request.GET.get("kind", ""),
        "query": request.GET.get("q", "").strip(),
    }
    files = Paginator(
        selectors.file_search(user=request.user, **filters), PAGE_SIZE
    ).get_page(request.GET.get("page"))
    return render(
        request,
        "files/home.html",
        {
            "files": files,
            "filters": filters,
            "filtered": any(filters.values()),
            "statuses": File.Status.values,
            "kinds": File.Kind.values,
            "last_event_id": last_event_id(user=request.user),
            **_upload_limits(),
        },
    )


def _upload_limits() -> dict[str, int]:
    """What the pages that send files (the dashboard, a file's Replace) need to
    know: files larger than a chunk go resumably (tus), a chunk at a time
    (docs/uploads.md)."""
    return {
        "max_upload_bytes": settings.DWELLFI_MAX_UPLOAD_BYTES,
        "resumable_from": min(
            settings.DWELLFI_UPLOAD_CHUNK_BYTES, settings.DWELLFI_MAX_UPLOAD_BYTES
        ),
        "chunk_bytes": settings.DWELLFI_UPLOAD_CHUNK_BYTES,
        "max_resumable_bytes": settings.DWELLFI_MAX_RESUMABLE_BYTES,
    }


@login_required
def file_page(request: HttpRequest, pk: int) -> HttpResponse:
    """One file: its summary, charts, anomalies (sortable) and validation errors."""
    file = selectors.file_get(user=request.user, file_id=pk)
    if file is None:
        raise Http404("No such file.")
    anomalies, sort = selectors.anomaly_list_sorted(
        file=file, sort=request.GET.get("sort", "")
    )
    anomalies = Paginator(anomalies, PAGE_SIZE).get_page(request.GET.get("anomalies"))
    errors = Paginator(selectors.record_error_list(file=file), PAGE_SIZE).get_page(
        request.GET.get("errors")
    )
    return render(
        request,
        "files/detail.html",
        {
            "file": file,
            # The chips and the chart's server choice: as many as one file's
            # resource lists, not all 1,000 names of up to 255 characters.
            "servers": summary_capped(file.summary or {}).get("servers", []),
            "anomalies": anomalies,
            "anomaly_columns": _sort_columns(sort),
            "errors": errors,
            "charted_metrics": _charted_metrics(file),
            "last_event_id": last_event_id(user=request.user),
            **_upload_limits(),
        },
    )


@login_required
def file_row(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """One row of the dashboard's table, for the page to show a file again."""
    file = selectors.file_get(user=request.user, file_id=pk)
    if file is None:
        raise Http404("No such file.")
    # A person who opens the address gets the file's page, not a bare table row.
    response = (
        render(request, "files/_file_row.html", {"file": file})
        if request.htmx
        else redirect(file)
    )
    patch_vary_headers(response, ("HX-Request",))
    return response


def _charted_metrics(file: File) -> list[str]:
    """The metrics the file has values for, in the usual order: one chart each."""
    stats = (file.summary or {}).get("metrics") or {}
    return [m for m in METRICS if (stats.get(m) or {}).get("count")]


ANOMALY_COLUMNS = (
    ("record", "Record", True),
    ("server", "Server", False),
    ("timestamp", "Timestamp (UTC)", False),
    ("metric", "Metric", False),
    ("value", "Value", True),
)


def _sort_columns(sort: str) -> list[dict[str, object]]:
    """The anomalies table's sortable headers: each link toggles its direction."""
    columns = []
    for key, label, numeric in ANOMALY_COLUMNS:
        active = sort.removeprefix("-") == key
        descending = active and sort.startswith("-")
        columns.append(
            {
                "key": key,
                "label": label,
                "numeric": numeric,
                "aria_sort": (
                    ("descending" if descending else "ascending") if active else ""
                ),
                "next": key if descending or not active else f"-{key}",
            }
        )
    return columns
