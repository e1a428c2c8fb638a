"""Where a cookie-authenticated WebSocket may be opened from: Django's CSRF rule.

A page on any site can open a WebSocket to DwellFi and the browser sends the
session cookie along, so such a socket must come from an allowed origin. The rule
is the one CsrfViewMiddleware applies to an unsafe request's Origin header, which
compares scheme, host and port:

* the site itself: the Origin equals the handshake's own origin, `http` or
  `https` (https when the request is secure — behind a proxy, when
  SECURE_PROXY_SSL_HEADER says so) followed by the Host header, whose host must be
  one of ALLOWED_HOSTS; or
* one of CSRF_TRUSTED_ORIGINS, exactly, or a subdomain of an entry such as
  `https://*.example.com`.

A missing Origin is refused: browsers always send one, and only browsers carry
cookies. (Token connections need no Origin: they are not checked here.)
"""

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the WebSocket handshake's Origin may use the session cookie."""
    headers = {
        name.lower(): value.decode("latin-1")
        for name, value in scope.get("headers", [])
    }
    origin = headers.get(b"origin", "").lower()
    if not origin or origin == "null":
        return False
    if origin == _own_origin(scope, headers):
        return True
    return _trusted(origin)


def _own_origin(scope: dict[str, Any], headers: dict[bytes, str]) -> str | None:
    """The handshake's own origin, when its Host is an allowed host."""
    host = headers.get(b"host", "").lower()
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:  # as Django's request.get_host()
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed):
        return None
    return f"{_scheme(scope, headers)}://{host}"


def _scheme(scope: dict[str, Any], headers: dict[bytes, str]) -> str:
    """`https` or `http`, as Django's request.is_secure() would tell."""
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        name = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode()
        if name in headers:
            value = headers[name].split(",", 1)[0].strip()
            return "https" if value == secure_value else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def _trusted(origin: str) -> bool:
    """Whether CSRF_TRUSTED_ORIGINS names the origin, or a domain above it."""
    try:
        parsed = urlsplit(origin)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        trusted = trusted.lower()
        if "*" not in trusted:
            if origin == trusted:
                return True
            continue
        entry = urlsplit(trusted)
        if parsed.scheme == entry.scheme and is_same_domain(
            parsed.netloc, entry.netloc.lstrip("*")
        ):
            return True
    return False
