"""HTTP security: CSRF, where tokens are read, throttling, size limits, hostile
filenames, content types, downloads, headers, deployment checks, deep nesting.

Most tests go through Django's test client; the ones about how a body is framed
(no Content-Length, a false one) and the production headers go through a real
daphne, since the test client always sets Content-Length and runs with DEBUG on.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.schemas.generators import EndpointEnumerator
from rest_framework.test import APIClient

from conftest import (
    RedisServer,
    free_port,
    live_env,
    production_env,
    start_process,
    start_web,
)
from dwellfi.processes import web_command
from files import services
from files.api.throttles import UploadThrottle
from files.models import File

from .factories import server_4_bytes, user_create

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def multipart_file(content: bytes, filename: str = "metrics.json", **fields) -> dict:
    return {"file": SimpleUploadedFile(filename, content), **fields}


def stored_paths() -> set[Path]:
    return {p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()}


# --- CSRF and where credentials are read ----------------------------------------------


@pytest.fixture
def browser(user) -> APIClient:
    """A client signed in with the session cookie, checking CSRF like a browser."""
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_token(client: APIClient) -> str:
    client.get(reverse("home"))  # the page sets the csrftoken cookie
    return client.cookies["csrftoken"].value


def test_session_writes_need_the_csrf_token(browser, user, rules):
    """Every write the session can make is refused without the token (403 JSON),
    accepted with it."""
    file = services.file_create(owner=user, upload=SimpleUploadedFile("a.json", b"[]"))
    writes = [
        ("post", "/api/files/", multipart_file(server_4_bytes())),
        ("put", f"/api/files/{file.pk}/", multipart_file(server_4_bytes())),
        ("post", f"/api/files/{file.pk}/reprocess/", {}),
        ("post", "/files/uploadfile/", multipart_file(server_4_bytes())),
        ("put", f"/files/updatefile/{file.pk}", multipart_file(server_4_bytes())),
        ("delete", f"/api/files/{file.pk}/", {}),
    ]
    for method, path, data in writes:
        response = getattr(browser, method)(path, data, format="multipart")
        assert response.status_code == 403, (method, path)
        assert response.json()["detail"].startswith("CSRF Failed")
    assert File.objects.count() == 1

    token = csrf_token(browser)
    for method, path, data in writes:
        for part in data.values():
            part.seek(0)
        response = getattr(browser, method)(
            path, data, format="multipart", HTTP_X_CSRFTOKEN=token
        )
        assert response.status_code < 300, (method, path, response.content)

    logout = browser.post(reverse("logout"))
    assert logout.status_code == 403  # the pages' forms are protected the same way


def test_a_token_in_a_header_needs_no_csrf_token(user):
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(
        HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}"
    )
    response = client.post("/api/files/", multipart_file(server_4_bytes()))
    assert response.status_code == 201


def test_tokens_are_never_read_from_cookies_or_the_query_string(user):
    key = Token.objects.create(user=user).key
    for name in ("token", "auth_token", "Authorization", "access_token", "sessionid"):
        client = APIClient()
        client.cookies[name] = key
        assert client.get("/api/files/").status_code == 401, name
        client.cookies[name] = f"Token {key}"
        assert client.get("/api/files/").status_code == 401, name
    anonymous = APIClient()
    assert anonymous.get(f"/api/files/?token={key}").status_code == 401
    assert anonymous.get(f"/api/files/?auth_token={key}").status_code == 401
    bearer = APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert bearer.get("/api/files/").status_code == 401
    assert (
        APIClient(HTTP_AUTHORIZATION=f"Token {key}").get("/api/files/").status_code
        == 200
    )


# --- throttling ---------------------------------------------------------------------


def test_uploads_are_throttled_per_user_in_redis(api, user, other_user, monkeypatch):
    """Three uploads a minute: the fourth gets 429 with Retry-After, whichever
    upload route it uses; another user is not affected; the count lives in Redis,
    where every web process reads and writes it."""
    import redis

    monkeypatch.setattr(UploadThrottle, "THROTTLE_RATES", {"uploads": "3/min"})
    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    key = f"{prefix}:1:throttle_window_uploads_{user.pk}"
    store = redis.Redis.from_url(settings.REDIS_URL)
    store.delete(key, key.replace(str(user.pk), str(other_user.pk)))

    for n in range(3):
        response = api.post("/api/files/", multipart_file(server_4_bytes()))
        assert response.status_code == 201, n
    assert store.exists(key)  # the history is in Redis, not in this process

    refused = [
        api.post("/api/files/", multipart_file(server_4_bytes())),
        api.post("/files/uploadfile/", multipart_file(server_4_bytes())),
        api.post(f"/api/files/{File.objects.first().pk}/reprocess/"),
    ]
    for response in refused:
        assert response.status_code == 429
        assert response.json()["detail"].startswith("Request was throttled")
        assert 0 < int(response["Retry-After"]) <= 60
    assert File.objects.count() == 3
    assert api.get("/api/files/").status_code == 200  # reads are not throttled

    other = APIClient()
    other.force_authenticate(other_user)
    assert (
        other.post("/api/files/", multipart_file(server_4_bytes())).status_code == 201
    )

    store.delete(key)  # as if another process saw the window expire
    assert api.post("/api/files/", multipart_file(server_4_bytes())).status_code == 201


def test_concurrent_uploads_of_one_user_pass_exactly_at_the_rate(user, monkeypatch):
    """DRF's throttle read and wrote the history without a lock: 8 uploads at once
    left a history of 6. Here 20 at once, at a rate of 5 a minute: exactly 5 pass,
    the others are told when to retry."""
    monkeypatch.setattr(UploadThrottle, "THROTTLE_RATES", {"uploads": "5/min"})
    request = SimpleNamespace(user=user)
    start = threading.Barrier(20)

    def attempt(_: int) -> tuple[bool, float | None]:
        throttle = UploadThrottle()
        start.wait()
        return throttle.allow_request(request, None), throttle.wait()

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(attempt, range(20)))
    assert [allowed for allowed, _ in outcomes].count(True) == 5
    assert all(0 < wait <= 60 for allowed, wait in outcomes if not allowed)


def test_the_throttle_lets_uploads_through_when_redis_is_down(api, settings):
    """Failing open: Redis down is the broker's problem, not a reason for a 500."""
    from dwellfi.cache import FailOpenRedisCache

    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }
    try:
        response = api.post("/api/files/", multipart_file(server_4_bytes()))
    finally:
        FailOpenRedisCache._retry_at = 0.0
    assert response.status_code == 201


# --- sign-in attempts ---------------------------------------------------------------


def sign_in(
    http: httpx.Client, username: str, password: str, **headers: str
) -> httpx.Response:
    """Submit the sign-in form as a browser does (the page first: the CSRF token)."""
    http.get("/login/")
    form = {
        "username": username,
        "password": password,
        "csrfmiddlewaretoken": http.cookies["csrftoken"],
    }
    return http.post("/login/", data=form, headers=headers)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_sign_ins_are_paused_after_five_wrong_passwords(live_stack):
    """Through daphne (django-axes): the fifth wrong password in a row for a user is
    answered 429 with a page saying why and for how long, and so is every attempt
    after it, the right password included; other users signing in from the same
    address are not affected. JSON clients get the reason as JSON."""
    victim, colleague = user_create(), user_create()
    with httpx.Client(base_url=live_stack.base_url) as http:
        for attempt in range(4):
            wrong = sign_in(http, victim.username, "wrong")
            assert wrong.status_code == 200, attempt  # the form again, with its error
            assert "Please enter a correct username and password" in wrong.text
        for password in ("wrong", "pw-test-123"):
            refused = sign_in(http, victim.username, password)
            assert refused.status_code == 429
            assert "Too many failed sign-in attempts" in refused.text
            assert "paused for 15 minutes" in refused.text
            assert refused.headers["Retry-After"] == "900"
        assert "sessionid" not in http.cookies
        as_json = sign_in(
            http, victim.username, "pw-test-123", Accept="application/json"
        )
        assert as_json.status_code == 429
        assert as_json.json()["detail"].startswith("5 wrong passwords in a row")

    with httpx.Client(base_url=live_stack.base_url) as http:
        signed_in = sign_in(http, colleague.username, "pw-test-123")
        assert signed_in.status_code == 302
        assert "sessionid" in http.cookies


# --- size limits ----------------------------------------------------------------------


def test_an_upload_over_the_limit_is_413_json_and_nothing_is_stored(api, settings):
    settings.DWELLFI_MAX_UPLOAD_BYTES = 1000
    before = stored_paths()
    for path in ("/api/files/", "/files/uploadfile/"):
        response = api.post(path, multipart_file(b"[" + b"1," * 1000 + b"1]"))
        assert response.status_code == 413
        assert response["Content-Type"] == "application/json"
        assert response.json() == {
            "detail": "Upload larger than the limit of 1000 bytes."
        }
    assert not File.objects.exists()
    assert stored_paths() == before


LIMIT = 100_000


@pytest.fixture(scope="module")
def small_limit_web(django_db_setup, django_db_blocker, tmp_path_factory):
    """A daphne that accepts uploads of up to 100 kB.

    It has a Redis of its own: no worker picks up what it enqueues, so nothing
    touches the database while a test's data is flushed.
    """
    logdir = tmp_path_factory.mktemp("small-limit")
    redis_server = RedisServer(logdir)
    redis_server.start()
    media = tmp_path_factory.getbasetemp() / "media"
    env = {
        **live_env(media),
        "REDIS_URL": redis_server.url,
        "DWELLFI_MAX_UPLOAD_BYTES": str(LIMIT),
    }
    port = free_port()
    try:
        web = start_web(env, logdir, port)
    except Exception:
        redis_server.kill()
        raise
    yield port
    web.stop()
    redis_server.kill()


BOUNDARY = "dwellfi-boundary"


def multipart_body(content: bytes, filename: str = "m.json") -> bytes:
    """A multipart body with one file part, its filename sent as is (UTF-8)."""
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        "Content-Type: application/json\r\n\r\n"
    )
    return head.encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()


def raw_post(port: int, token: str, body: bytes, framing: str) -> tuple[int, bytes]:
    """POST /api/files/ over a bare socket, framing the body as asked.

    `chunked`: Transfer-Encoding, no Content-Length. `short`: a Content-Length
    under the real size. `long`: one over it, the sender then half-closes.
    Returns the status and body of the response, or (0, b"") for none.
    """
    head = [
        "POST /api/files/ HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Authorization: Token {token}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        "Connection: close",
    ]
    if framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        step = 16 * 1024
        payload = (
            b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
                for i in range(0, len(body), step)
            )
            + b"0\r\n\r\n"
        )
    else:
        declared = {"honest": len(body), "short": 500, "long": len(body) * 10}[framing]
        head.append(f"Content-Length: {declared}")
        payload = body
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            sock.sendall(payload)
            if framing == "long":
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before reading everything
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return 0, b""
        return response.status, response.read()


@pytest.mark.django_db(transaction=True)
def test_body_size_is_enforced_however_the_body_is_framed(small_limit_web, rules):
    """Through daphne: an oversize body is refused with 413 JSON whether it
    declares its length or comes chunked with none; a false Content-Length never
    gets anything stored; an honest chunked upload under the limit works."""
    token = Token.objects.create(user=user_create()).key
    before = stored_paths()
    oversize = multipart_body(b"[" + b"1," * LIMIT + b"1]")

    for framing in ("honest", "chunked"):
        status, body = raw_post(small_limit_web, token, oversize, framing)
        assert status == 413, (framing, body)
        assert json.loads(body) == {
            "detail": f"Upload larger than the limit of {LIMIT} bytes."
        }
    for framing in ("short", "long"):
        status, body = raw_post(small_limit_web, token, oversize, framing)
        assert status in (0, 400, 413), (framing, status, body)
    assert not File.objects.exists()
    assert stored_paths() == before

    status, body = raw_post(
        small_limit_web, token, multipart_body(server_4_bytes()), "chunked"
    )
    assert status == 201, body
    assert json.loads(body)["size"] == len(server_4_bytes())


# --- filenames ----------------------------------------------------------------------

HOSTILE_NAMES = {
    "../../../etc/passwd": "passwd",
    "..\\..\\windows\\system32\\evil.json": "evil.json",
    "nul\x00byte.json": "nulbyte.json",
    "invoice\u202efdp.json": "invoicefdp.json",
    "line\r\nSet-Cookie: x=1.json": "lineSet-Cookie: x=1.json",
    "x" * 300 + ".json": "x" * 255,
    "..": "upload.json",
}


def test_hostile_names_never_reach_the_file_system_and_display_safely(user, rules):
    """Whichever route brings the name (multipart filename, the `name` field, the
    seed's JSON form), the bytes are stored under a generated name inside the
    media root, and the name shown has no path, control or bidi characters."""
    api = APIClient()
    api.force_authenticate(user)
    media = Path(settings.MEDIA_ROOT).resolve()
    for hostile in HOSTILE_NAMES:
        seed_form = json.dumps({"filename": hostile, "type": "application/json"})
        attempts = [
            api.post(
                "/api/files/", multipart_file(server_4_bytes(), "ok.json", name=hostile)
            ),
            api.post(
                "/files/uploadfile/",
                multipart_file(server_4_bytes(), file_data_create_form=seed_form),
            ),
            api.generic(
                "POST",
                "/api/files/",
                multipart_body(server_4_bytes(), filename=hostile),
                content_type=f"multipart/form-data; boundary={BOUNDARY}",
            ),
        ]
        for response in attempts:
            if response.status_code == 400:  # refused outright (e.g. too long): fine
                continue
            # 201 from the canonical API, 200 from the seed's route (as the seed)
            assert response.status_code in (200, 201), (hostile, response.content)
            file = File.objects.get(pk=response.json()["id"])
            stored = (media / file.content.name).resolve()
            assert stored.is_relative_to(media) and stored.is_file()
            assert stored.name == file.stored_name
            assert hostile not in file.content.name
            assert "\x00" not in file.name and "\u202e" not in file.name
            assert "\r" not in file.name and "\n" not in file.name
            assert "/" not in file.name and "\\" not in file.name
            assert len(file.name) <= 255
    names = set(File.objects.values_list("name", flat=True))
    for shown in HOSTILE_NAMES.values():
        assert shown in names, shown


def test_pages_escape_names_and_downloads_are_safe_attachments(client, user, rules):
    file = services.file_create(
        owner=user,
        upload=SimpleUploadedFile("x.json", server_4_bytes()),
        name='<img src=x onerror=alert(1)> "quoted"\u202e.json',
    )
    assert file.name == '<img src=x onerror=alert(1)> "quoted".json'
    client.force_login(user)
    for page in (reverse("home"), reverse("file-page", args=[file.pk])):
        html = client.get(page).content.decode()
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
        assert "<img src=x" not in html

    download = client.get(f"/api/files/{file.pk}/download/")
    assert download.status_code == 200
    assert download["Content-Type"] == "application/octet-stream"
    assert download["X-Content-Type-Options"] == "nosniff"
    assert download["Content-Disposition"] == (
        'attachment; filename="<img src=x onerror=alert(1)> \\"quoted\\".json"'
    )
    assert b"".join(download.streaming_content) == server_4_bytes()

    crlf = services.file_create(
        owner=user, upload=SimpleUploadedFile("y.json", b"[]"), name="a\r\nX-Evil: 1"
    )
    response = client.get(f"/api/files/{crlf.pk}/download/")
    assert response.status_code == 200
    assert "X-Evil" not in response.headers


# --- content types --------------------------------------------------------------------


def test_the_content_type_is_decided_by_parsing_not_by_the_header(api, user, rules):
    """JSON declared as a PNG is accepted and processed as metrics; a PNG or an
    HTML page declared as JSON is refused; downloads never echo the declared type."""
    disguised = SimpleUploadedFile(
        "photo.png", server_4_bytes(), content_type="image/png"
    )
    response = api.post("/api/files/", {"file": disguised})
    assert response.status_code == 201
    file = File.objects.get(pk=response.json()["id"])
    services.file_process(file_id=file.pk, task_id=file.task_id)
    file.refresh_from_db()
    assert (file.kind, file.status, file.record_count) == (
        "server_metrics",
        "processed",
        9,
    )

    for content, name in (
        (PNG, "x.json"),
        (b"<html><script>alert(1)</script>", "x.json"),
    ):
        lying = SimpleUploadedFile(name, content, content_type="application/json")
        response = api.post("/api/files/", {"file": lying})
        assert response.status_code == 400
        assert response.json()["detail"] == "file: The submitted file is not JSON."

    html_as_json = SimpleUploadedFile(
        "page.html", b'["<script>alert(1)</script>"]', content_type="text/html"
    )
    response = api.post("/api/files/", {"file": html_as_json})
    assert response.status_code == 201
    download = api.get(f"/api/files/{response.json()['id']}/download/")
    assert download["Content-Type"] == "application/octet-stream"
    assert download["Content-Disposition"].startswith("attachment")


# --- headers and the deployment checks -----------------------------------------------


def test_security_headers_on_pages_and_api(client, api, user):
    client.force_login(user)
    for response in (client.get(reverse("home")), api.get("/api/files/")):
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def test_deploy_checks_pass_with_production_settings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=settings.BASE_DIR,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = production_env()
    del env["DJANGO_SECRET_KEY"]
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


SHOW_DEBUG = "from django.conf import settings; print(settings.DEBUG)"


def test_manage_py_defaults_to_development():
    """Beside `make run`, `manage.py createsuperuser` or `drf_create_token` work
    with nothing set: manage.py loads the development settings."""
    unset = ("DJANGO_DEBUG", "DJANGO_SECRET_KEY")
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SHOW_DEBUG],
        cwd=settings.BASE_DIR,
        env={k: v for k, v in os.environ.items() if k not in unset},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"


def test_daphne_defaults_to_production_and_needs_a_secret_key(tmp_path):
    """daphne serving `dwellfi.asgi:application` with neither DJANGO_DEBUG nor a
    secret key set does not start in development mode: it refuses to start."""
    env = production_env(**live_env(tmp_path))
    del env["DJANGO_DEBUG"], env["DJANGO_SECRET_KEY"]
    web = start_process("web", web_command(free_port()), env, tmp_path)
    try:
        assert web.popen.wait(60) != 0
    finally:
        web.stop()
    assert "Set the DJANGO_SECRET_KEY environment variable" in web.output()


@pytest.mark.django_db(transaction=True)
def test_production_daphne_redirects_to_https_and_sends_hsts(tmp_path):
    """No DJANGO_DEBUG at all, so production (dwellfi/asgi.py's default), behind a
    TLS proxy: plain HTTP is redirected (except /healthz), HTTPS answers carry
    HSTS, unknown hosts are refused. (Secure cookies and the rest are what
    `check --deploy` verifies.)"""
    env = production_env(
        **{
            k: v
            for k, v in live_env(tmp_path).items()
            if k.startswith(("DATABASE", "REDIS", "DWELLFI_MEDIA"))
        }
    )
    del env["DJANGO_DEBUG"]
    port = free_port()
    web = start_web(env, tmp_path, port)
    try:
        base = f"http://127.0.0.1:{port}"
        host = {"Host": "dwellfi.example.com"}
        plain = httpx.get(f"{base}/api/files/", headers=host)
        assert plain.status_code == 301
        assert plain.headers["Location"] == "https://dwellfi.example.com/api/files/"
        assert httpx.get(f"{base}/healthz", headers=host).status_code == 200

        secure = {**host, "X-Forwarded-Proto": "https"}
        api = httpx.get(f"{base}/api/files/", headers=secure)
        assert api.status_code == 401
        assert api.headers["Strict-Transport-Security"] == (
            "max-age=31536000; includeSubDomains; preload"
        )
        assert (
            httpx.get(
                f"{base}/api/files/", headers={"Host": "evil.example"}
            ).status_code
            == 400
        )
    finally:
        web.stop()


# --- deep nesting -------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def json_endpoints(file_id: int) -> list[tuple[str, str]]:
    """Every DRF route with every method that may carry a body; DELETE last."""
    paths = sorted({path for path, _, _ in EndpointEnumerator().get_api_endpoints()})
    return [
        (method, path.replace("{pk}", str(file_id)))
        for method in ("OPTIONS", "POST", "PUT", "PATCH", "DELETE")
        for path in paths
    ]


def test_deeply_nested_json_is_never_a_server_error_on_any_endpoint(api, user, rules):
    """The DRF JSON parser's RecursionError (NOTES) is answered, on every route:
    each answers a 100,000-deep JSON body as it answers `[]`, never with a 500."""
    file = services.file_create(owner=user, upload=SimpleUploadedFile("a.json", b"[]"))
    endpoints = json_endpoints(file.pk)
    assert ("POST", "/api/files/") in endpoints
    assert ("PUT", f"/files/updatefile/{file.pk}/") in endpoints
    for method, path in endpoints:
        deep = api.generic(method, path, DEEP, content_type="application/json")
        assert deep.status_code < 500, (method, path, deep.content[:200])
        if method != "DELETE":  # the first DELETE removed the file
            shallow = api.generic(method, path, "[]", content_type="application/json")
            assert deep.status_code == shallow.status_code, (method, path)


def test_options_on_the_swagger_page_is_not_a_server_error(api):
    assert api.options("/api/docs/").status_code < 500


def test_deeply_nested_json_in_the_seed_form_fields_is_a_400(api, user, rules):
    file = services.file_create(owner=user, upload=SimpleUploadedFile("a.json", b"[]"))
    created = api.post(
        "/files/uploadfile/",
        multipart_file(server_4_bytes(), file_data_create_form=DEEP),
    )
    updated = api.put(
        f"/files/updatefile/{file.pk}",
        {"file_update_form": DEEP},
        format="multipart",
    )
    assert (created.status_code, updated.status_code) == (400, 400)
