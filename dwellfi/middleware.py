"""Requests that no view should see, refused before anything reads them."""

from collections.abc import Callable
from contextlib import suppress
from http.cookies import CookieError

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from files.api.errors import bad_request

NUL = "\x00"


@sync_and_async_middleware
def nul_character_middleware(get_response: Callable) -> Callable:
    """A NUL character in the path, the query string, a header or a cookie: 400.

    PostgreSQL text cannot hold NUL, so one in `?q=`, a filter or the session cookie
    failed the query it reached as a 500 (the session's on every page, /login/
    included). Nothing legitimate sends one. The 400 also expires the cookies that
    hold one, so a browser that got such a cookie works again on its next request.
    Form fields are checked by the parsers and the forms (`files/api/parsers.py`).
    """
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            return nul_refusal(request) or await get_response(request)

    else:

        def middleware(request: HttpRequest) -> HttpResponse:
            return nul_refusal(request) or get_response(request)

    return middleware


def nul_refusal(request: HttpRequest) -> HttpResponse | None:
    """The 400 for a request holding a NUL character; None for any other."""
    where = _nul_in(request)
    if where is None:
        return None
    response = bad_request(request, detail=f"The request's {where} holds a NUL.")
    for name, value in request.COOKIES.items():
        if NUL in value:
            with suppress(CookieError):  # a name no Set-Cookie can carry
                response.delete_cookie(name)
    return response


def _nul_in(request: HttpRequest) -> str | None:
    """Which part of the request holds a NUL character, if any."""
    if NUL in request.path:
        return "path"
    query = request.META.get("QUERY_STRING", "")
    if NUL in query or "%00" in query:
        return "query string"
    if any(NUL in value for value in request.COOKIES.values()):
        return "cookie"
    for key, value in request.META.items():
        if key.startswith("HTTP_") and isinstance(value, str) and NUL in value:
            return "header"
    return None
