"""Hostile and careless HTTP requests through a real daphne: each gets a clear 4xx,
JSON on the API and a friendly page elsewhere, and nothing of it is stored.

A daphne with production settings (as users meet it; plain HTTP allowed, a Redis
of its own and no worker) takes the requests as raw bytes over a socket, so each
one arrives exactly as written: framing, bad bytes and all. What only shows with
DEBUG on (Django's HTML debug pages) is checked on the session's `live_stack`. A
hypothesis property fuzzes bodies, headers, cookies and query strings on the upload
and list routes and never sees a 5xx.
"""

import http.client
import json
import socket
import string
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie

import pytest
from django.conf import settings as django_settings
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token

from conftest import Process, RedisServer, start_production_web
from files.models import File

from .factories import server_4_bytes, user_create
from .test_security import stored_paths

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BOUNDARY = "hostile-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
FORM = "application/x-www-form-urlencoded"
DATA_LIMIT = 2_621_440  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE
TOO_LARGE = (
    f"The form fields are larger than the limit of {DATA_LIMIT} bytes "
    "(files do not count)."
)


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        assert self.headers["Content-Type"] == "application/json", self.headers
        return json.loads(self.body)


def exchange(
    port: int, method: str, target: bytes | str, headers: dict, body: bytes = b""
) -> Answer:
    """One request, written byte for byte, over a fresh connection; its answer."""
    target = target.encode("latin-1") if isinstance(target, str) else target
    lines = [b"%s %s HTTP/1.1" % (method.encode(), target), b"Host: 127.0.0.1"]
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        value = value.encode("latin-1") if isinstance(value, str) else value
        lines.append(name.encode("latin-1") + b": " + value)
    lines.append(b"Connection: close")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Answer(response.status, response.headers, response.read())


def part(name: bytes, value: bytes, filename: bytes | None = None, ctype=None) -> bytes:
    """One part of a multipart body, its header bytes as given."""
    disposition = b'Content-Disposition: form-data; name="%s"' % name
    if filename is not None:
        disposition += b'; filename="%s"' % filename
    head = b"--" + BOUNDARY.encode() + b"\r\n" + disposition + b"\r\n"
    if ctype is not None:
        head += b"Content-Type: " + ctype + b"\r\n"
    return head + b"\r\n" + value + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"


FILE = part(b"file", server_4_bytes(), b"m.json", b"application/json")


@dataclass
class Web:
    """The production daphne these tests talk to, and a user's token."""

    process: Process
    port: int

    def send(self, method: str, target, body: bytes = b"", **headers) -> Answer:
        return exchange(self.port, method, target, headers, body)


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Web]:
    folder = tmp_path_factory.mktemp("hostile-http")
    redis_server = RedisServer(folder)
    redis_server.start()
    try:
        process, port = start_production_web(
            folder,
            tmp_path_factory.getbasetemp() / "media",
            redis_server.url,
            DJANGO_SECURE_SSL_REDIRECT="0",
            # The tests' own sessions must be valid there (signed with this key).
            DJANGO_SECRET_KEY=django_settings.SECRET_KEY,
            DWELLFI_UPLOAD_RATE="100000/min",  # the fuzzing uploads a lot
        )
    except Exception:
        redis_server.kill()
        raise
    yield Web(process, port)
    process.stop()
    redis_server.kill()


@pytest.fixture
def auth(db) -> dict[str, str]:
    token = Token.objects.create(user=user_create()).key
    return {"Authorization": f"Token {token}"}


@pytest.fixture
def existing(auth) -> File:
    """A file of the caller's, for the routes that replace one."""
    user = Token.objects.get(key=auth["Authorization"].split()[1]).user
    file = File(owner=user, name="old.json", size=2, sha256="0" * 64)
    file.content.name = "uploads/old.json"
    file.save()
    return file


def assert_nothing_stored(before: set, files: int = 0) -> None:
    assert File.objects.count() == files
    assert stored_paths() == before


# --- Django's refusals: too many fields, too many files, fields too large -----------

MANY_FIELDS = multipart(FILE, *[part(b"f%d" % i, b"x") for i in range(1001)])
MANY_FILES = multipart(*[part(b"file", b"[1]", b"a.json") for _ in range(101)])
LARGE_FIELD = multipart(FILE, part(b"name", b"x" * 3_000_000))
LARGE_FORM = b"name=" + b"x" * 3_000_000

REFUSALS = [
    (MANY_FIELDS, MULTIPART, 400, "More than 1000 fields or parameters."),
    (MANY_FILES, MULTIPART, 400, "More than 100 files."),
    (LARGE_FIELD, MULTIPART, 413, TOO_LARGE),
    (LARGE_FORM, FORM, 413, TOO_LARGE),
]
ROUTES = [
    ("POST", "/api/files/"),
    ("PUT", "/api/files/{id}/"),
    ("POST", "/files/uploadfile/"),
    ("PUT", "/files/updatefile/{id}"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_too_many_or_too_large_form_fields_are_4xx_json(
    web, auth, existing, method, path
):
    """Each of Django's refusals on each upload and replace route: 400 or 413 with
    a message saying which limit, never the 500 they were."""
    before = stored_paths()
    for body, content_type, status, detail in REFUSALS:
        answer = web.send(
            method,
            path.format(id=existing.pk),
            body,
            **auth,
            **{"Content-Type": content_type},
        )
        assert (answer.status, answer.json()) == (status, {"detail": detail})
    assert_nothing_stored(before, files=1)
    existing.refresh_from_db()
    assert existing.name == "old.json"


def test_too_many_fields_on_a_page_form_get_the_friendly_page(web):
    """The sign-in form, posted with 1,001 fields: the friendly 400 page."""
    form = web.send("GET", "/login/")
    token = SimpleCookie(form.headers["Set-Cookie"])["csrftoken"].value
    body = "&".join(f"f{i}=x" for i in range(1001)).encode()
    headers = {"Content-Type": FORM, "Cookie": f"csrftoken={token}"}
    answer = web.send("POST", "/login/", body, **headers)
    assert answer.status == 400
    assert answer.headers["Content-Type"].startswith("text/html")
    page = answer.body.decode()
    assert "This request could not be read" in page
    assert "More than 1000 fields or parameters." in page


# --- text that cannot be stored: lone surrogates, NUL, bytes that are not UTF-8 ------

SEED_FORMS = {
    "lone surrogate": (
        b'{"filename": "\\ud800.json"}',
        "Surrogate characters are not allowed: U+D800.",
    ),
    "NUL": (b'{"filename": "a.json", "type": "x\\u0000"}', "Null characters"),
    "not UTF-8": (b'{"filename": "\xff\xfe.json"}', "is not valid UTF-8 text."),
}


@pytest.mark.parametrize("case", SEED_FORMS)
def test_broken_text_in_the_seed_form_fields_is_400_and_nothing_is_stored(
    web, auth, existing, case
):
    """The seed's JSON-in-a-form-field with a lone surrogate, a NUL escape or bytes
    that are not UTF-8: 400 on upload and on update, and the upload's bytes are not
    left on disk (they were stored before the 500, orphaned)."""
    form, message = SEED_FORMS[case]
    before = stored_paths()
    created = web.send(
        "POST",
        "/files/uploadfile/",
        multipart(FILE, part(b"file_data_create_form", form)),
        **auth,
        **{"Content-Type": MULTIPART},
    )
    updated = web.send(
        "PUT",
        f"/files/updatefile/{existing.pk}",
        multipart(FILE, part(b"file_update_form", form)),
        **auth,
        **{"Content-Type": MULTIPART},
    )
    for answer in (created, updated):
        assert answer.status == 400
        assert message in answer.json()["detail"]
    assert_nothing_stored(before, files=1)


def test_nul_or_undecodable_bytes_in_form_fields_are_400(web, auth):
    """A NUL in a text field or in a file part's Content-Type (PostgreSQL cannot
    store it), bytes that are not UTF-8 in a field: 400, nothing stored."""
    before = stored_paths()
    cases = [
        (multipart(FILE, part(b"name", b"a\x00b")), "Field 'name' holds a NUL"),
        (multipart(FILE, part(b"name", b"\xc3(")), "Field 'name' is not valid UTF-8"),
        (
            multipart(part(b"file", b"[1]", b"a.json", b"application/j\x00son")),
            "Content-Type holds a NUL",
        ),
    ]
    for body, message in cases:
        answer = web.send(
            "POST", "/api/files/", body, **auth, **{"Content-Type": MULTIPART}
        )
        assert answer.status == 400
        assert message in answer.json()["detail"]
    form = web.send(
        "POST", "/api/files/", b"name=%00", **auth, **{"Content-Type": FORM}
    )
    assert form.status == 400
    assert_nothing_stored(before)


# --- NUL anywhere else: path, query string, headers, cookies -------------------------


def test_a_nul_in_the_query_string_or_path_is_400(web, auth, user):
    """`?q=` on the pages and every filter of the API went to PostgreSQL and failed
    there as a 500; the path too."""
    session = Client()
    session.force_login(user)
    cookie = {"Cookie": f"sessionid={session.cookies['sessionid'].value}"}
    page = web.send("GET", "/?q=%00", **cookie)
    assert page.status == 400
    assert "holds a NUL" in page.body.decode()
    assert page.headers["Content-Type"].startswith("text/html")
    for target in (
        "/api/files/?search=%00",
        "/api/files/?status=a%00",
        "/api/events/?after=%00",
        "/files/files/?x=%00",
        "/api/files/%00/",
    ):
        answer = web.send("GET", target, **auth)
        assert answer.status == 400, target
        assert answer.json()["detail"].endswith("holds a NUL.")
    assert web.send("GET", "/?q=fine", **cookie).status == 200


def test_a_session_cookie_holding_a_nul_is_400_and_expired(web):
    """A session cookie with a NUL (octal escape in a quoted value) made every page,
    /login/ included, a 500. Now: a 400 that also expires the cookie, and the next
    request without it works."""
    bad = {"Cookie": 'sessionid="abcdefgh\\000ijk"; theme=dark'}
    for target in ("/login/", "/", "/api/files/"):
        answer = web.send("GET", target, **bad)
        assert answer.status == 400, target
        expired = [
            value
            for value in answer.headers.get_all("Set-Cookie")
            if value.startswith("sessionid=")
        ]
        assert expired and "Max-Age=0" in expired[0]
    assert web.send("GET", "/login/").status == 200


def test_a_raw_nul_in_a_header_is_refused_by_daphne(web, auth):
    """daphne (Twisted) itself refuses a header holding a raw NUL, before Django."""
    answer = web.send("GET", "/api/files/", **auth, **{"X-Note": "a\x00b"})
    assert answer.status == 400


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data", "multipart/form-data; boundary="]
)
def test_a_multipart_body_without_a_usable_boundary_is_a_json_400(
    web, auth, content_type
):
    """Django answers it, not Twisted with an empty 400 (dwellfi/webserver.py)."""
    answer = web.send(
        "POST", "/api/files/", FILE, **auth, **{"Content-Type": content_type}
    )
    assert answer.status == 400
    assert "Multipart form parse error" in json.loads(answer.body)["detail"]


# --- unknown paths under the API -----------------------------------------------------


def test_unknown_api_paths_are_a_json_404_with_debug_on(live_stack, auth):
    """With DEBUG on (`make run`) Django answered an unknown path with its HTML
    debug page, and a POST without the trailing slash with a 500. Now JSON."""
    port = int(live_stack.base_url.rsplit(":", 1)[1])
    for target in ("/api/nope/", "/api/nope", "/api/files/1/nope/", "/files/nope"):
        answer = exchange(port, "GET", target, auth)
        assert (answer.status, answer.json()) == (404, {"detail": "Not found."})
    post = exchange(port, "POST", "/api/files", auth)
    assert post.status == 404
    assert post.json() == {
        "detail": "Not found. The path ends with a slash: /api/files/"
    }
    redirected = exchange(port, "GET", "/api/files?page=1", auth)
    assert redirected.status == 301
    assert redirected.headers["Location"] == "/api/files/?page=1"


# --- the property: whatever arrives, never a 5xx -------------------------------------

# Well-formed pieces mixed with hostile ones, so that requests get past the first
# refusal and reach every layer: daphne, the middleware, the parsers, the views.
NASTY_TEXT = st.sampled_from(
    ["", "\x00", "\ud800", "\ufffd", "é", '"', "\\", ";", "=", "%", "%00", "\r"]
)
text = st.text(max_size=12) | NASTY_TEXT
raw = st.binary(max_size=40) | st.sampled_from(
    [b"\x00", b"\xff\xfe", b'\\"', b"%00", b"\xed\xa0\x80", b"\\000", b"\r\n\r\n"]
)
plain = st.text(
    alphabet=string.ascii_letters + string.digits + "-._~ /*;=,", max_size=30
).map(str.encode)
CLOSING = b"--" + BOUNDARY.encode() + b"--\r\n"
CONTENT_TYPES = [MULTIPART] * 4 + [
    MULTIPART + "; charset=bogus",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=\u00e9",
    FORM,
    "application/json",
    "text/plain",
]
# Quoted cookie values are unescaped by Django: \\000 becomes a NUL.
QUOTED_COOKIES = [b'"abcdefgh\\000"', b'"\\377\\376"', b'"open', b'"a\\"b"']
HEADERS = [
    "X-Request-ID",
    "Accept",
    "Accept-Language",
    "X-CSRFToken",
    "Origin",
    "Referer",
    "If-None-Match",
    "X-Forwarded-Proto",
]


def header_safe(value: bytes) -> bytes:
    """What can stand in a header line: no CR or LF (they would end it)."""
    return value.replace(b"\r", b"").replace(b"\n", b"")


header_value = plain | raw.map(header_safe)


@st.composite
def parts(draw) -> bytes:
    """One multipart part: a file, a text field or the seed's JSON form, or junk."""
    name = draw(
        st.sampled_from([b"file", b"name", b"file_data_create_form", b"q"])
        | header_value
    )
    value = draw(
        st.sampled_from(
            [
                server_4_bytes(),
                b"[]",
                b'{"filename": "a.json"}',
                b'{"filename": "\\ud800"}',
                b'{"type": "\\u0000"}',
            ]
        )
        | raw
    )
    filename = draw(st.none() | st.just(b"m.json") | raw.map(header_safe))
    ctype = draw(st.none() | st.just(b"application/json") | header_value)
    return part(name.replace(b'"', b""), value, filename, ctype)


def encoded(pairs: list[tuple[str, str]]) -> bytes:
    """Pairs of text as a query string or form (lone surrogates kept as bytes)."""
    return "&".join(
        urllib.parse.quote(k, errors="surrogatepass")
        + "="
        + urllib.parse.quote(v, errors="surrogatepass")
        for k, v in pairs
    ).encode()


@st.composite
def requests(draw) -> tuple[str, bytes, dict, bytes]:
    """A request to an upload or list route: query, cookies, headers, body."""
    method, path = draw(
        st.sampled_from(
            [
                ("POST", "/api/files/"),
                ("POST", "/files/uploadfile/"),
                ("GET", "/api/files/"),
                ("GET", "/files/files/"),
            ]
        )
    )
    query = encoded(draw(st.lists(st.tuples(text, text), max_size=3)))
    query += draw(st.sampled_from([b""] * 4 + [b"&%", b"&%zz", b"&a=%ff"]))
    target = path.encode() + (b"?" + query if query else b"")
    headers = {}
    body = b""
    if method == "POST":
        body = (FILE if draw(st.booleans()) else b"") + b"".join(
            draw(st.lists(parts(), max_size=3))
        )
        body += draw(st.sampled_from([CLOSING] * 3 + [b""]))
        headers["Content-Type"] = draw(st.sampled_from(CONTENT_TYPES))
        if headers["Content-Type"] == FORM:
            body = encoded(draw(st.lists(st.tuples(text, text), max_size=3)))
    cookies = draw(
        st.lists(
            st.tuples(
                st.sampled_from([b"sessionid", b"csrftoken"]) | plain,
                header_value | st.sampled_from(QUOTED_COOKIES),
            ),
            max_size=3,
        )
    )
    if cookies:
        headers["Cookie"] = b"; ".join(name + b"=" + value for name, value in cookies)
    for name, value in draw(
        st.lists(st.tuples(st.sampled_from(HEADERS), header_value), max_size=3)
    ):
        headers[name] = value
    return method, target, headers, body


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_property_no_request_to_the_upload_and_list_routes_is_a_server_error(
    web, auth, request
):
    method, target, headers, body = request
    try:
        answer = exchange(web.port, method, target, {**auth, **headers}, body)
    except (http.client.RemoteDisconnected, ConnectionResetError):
        pytest.fail("daphne closed the connection without an answer")
    event(f"{method} {answer.status}")  # --hypothesis-show-statistics
    assert 100 <= answer.status < 500, (answer.status, answer.body[:300])


def test_the_fuzzed_daphne_logged_no_server_error(web):
    """Runs after the property: not one traceback or 500 in daphne's log."""
    log = web.process.output()
    assert "Traceback" not in log
    assert "Internal Server Error" not in log
    assert web.process.popen.poll() is None
