"""The production shape's proxy: Debian's nginx, with the repository's config, in
front of a real daphne with production settings.

`deploy/nginx/templates/default.conf.template` is rendered for this test's ports
and folders as the official image renders it, inside a main config like the
image's own. nginx runs as a child of the test on free ports in a temporary
folder (its pid, logs and temporary files there), with a self-signed certificate,
and is stopped by its pid. daphne has a Redis of its own: no worker picks up what
it enqueues, so nothing touches the database while a test's data is flushed.
"""

import getpass
import json
import logging
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token
from websockets.sync.client import connect

from conftest import (
    Process,
    RedisServer,
    free_port,
    start_process,
    start_production_web,
    wait_for,
)
from dwellfi.processes import accepts_tcp
from files.models import File

from .factories import server_4_bytes, user_create
from .test_downloads import (
    BIG,
    PARALLEL,
    PeakMemory,
    big_file,
    parallel_downloads,
    rss,
)
from .test_security import multipart_body, raw_post, sign_in, stored_paths
from .test_tus import CHUNK

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TEMPLATE = Path(settings.BASE_DIR, "deploy/nginx/templates/default.conf.template")
LIMIT = 1024 * 1024  # the upload limit here: 1 MiB
CHUNK_LIMIT = 256 * 1024  # a resumable upload's chunk here: 256 KiB

logger = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(NGINX).exists(), reason="needs Debian's nginx: apt-get install nginx"
    ),
]

# What the official image's /etc/nginx/nginx.conf holds around conf.d/*.conf, with
# this test's folders for everything nginx writes.
MAIN_CONFIG = """\
user {user};
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {dir}/access.log;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/default.conf;
}}
"""


def render(template: str, values: dict[str, str]) -> str:
    """Fill each ${NAME} as the image's envsubst does (names not given stay)."""
    return re.sub(
        r"\$\{(\w+)\}", lambda match: values.get(match[1], match[0]), template
    )


@dataclass
class Proxy:
    """nginx in front of daphne: where to reach them, and their processes."""

    http: int
    https: int
    cert: Path
    static: Path
    web: Process
    nginx: Process

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.https}"

    def tls(self) -> ssl.SSLContext:
        """A TLS context that trusts the test's certificate."""
        return ssl.create_default_context(cafile=str(self.cert))

    def client(self, **kwargs) -> httpx.Client:
        """An HTTPS client of the proxy."""
        return httpx.Client(base_url=self.base_url, verify=self.tls(), **kwargs)


def self_signed_certificate(folder: Path) -> Path:
    """fullchain.pem and privkey.pem for 127.0.0.1, as a site would mount them."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + [
            "-keyout",
            str(folder / "privkey.pem"),
            "-out",
            str(folder / "fullchain.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return folder / "fullchain.pem"


@pytest.fixture(scope="module")
def proxy(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Proxy]:
    """daphne (production settings, behind a proxy) and nginx in front of it."""
    folder = tmp_path_factory.mktemp("proxy")
    certs, static = folder / "certs", folder / "static"
    certs.mkdir()
    cert = self_signed_certificate(certs)
    media = tmp_path_factory.getbasetemp() / "media"
    redis_server = RedisServer(folder)
    redis_server.start()
    web = nginx = None
    try:
        web, web_port = start_production_web(
            folder,
            media,
            redis_server.url,
            "--proxy-headers",
            DWELLFI_MAX_UPLOAD_BYTES=str(LIMIT),
            DWELLFI_UPLOAD_CHUNK_BYTES=str(CHUNK_LIMIT),
            DWELLFI_X_ACCEL_PREFIX="/_protected/",
        )
        http_port, https_port = free_port(), free_port()
        (folder / "default.conf").write_text(
            render(
                TEMPLATE.read_text(),
                {
                    "DWELLFI_UPSTREAM": f"127.0.0.1:{web_port}",
                    "DWELLFI_MAX_UPLOAD_BYTES": str(LIMIT),
                    "DWELLFI_UPLOAD_CHUNK_BYTES": str(CHUNK_LIMIT),
                    "NGINX_HTTP_PORT": str(http_port),
                    "NGINX_HTTPS_PORT": str(https_port),
                    "NGINX_CERT_DIR": str(certs),
                    "NGINX_STATIC_ROOT": str(static),
                    "NGINX_MEDIA_ROOT": str(media),
                },
            )
        )
        (folder / "nginx.conf").write_text(
            MAIN_CONFIG.format(user=getpass.getuser(), dir=folder)
        )
        command = [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf")]
        subprocess.run([*command, "-t", "-q"], check=True, capture_output=True)
        nginx = start_process("nginx", [*command, "-g", "daemon off;"], {}, folder)
        wait_for(
            lambda: accepts_tcp(https_port), timeout=20, what="nginx", process=nginx
        )
        yield Proxy(http_port, https_port, cert, static, web, nginx)
    finally:
        for process in (nginx, web):
            if process is not None:
                process.stop()
        redis_server.kill()


def token_for(user) -> str:
    return Token.objects.create(user=user).key


@pytest.mark.django_db(transaction=True)
def test_an_oversize_body_is_refused_by_the_proxy_and_never_reaches_daphne(proxy):
    """A 30 MB upload over the 1 MiB limit, declared or chunked: nginx answers 413
    as JSON, daphne never sees the request (its log has no such POST) and its
    memory does not move; nothing is stored. An upload under the limit passes."""
    token = token_for(user_create())
    before_files = stored_paths()
    body = multipart_body(b"[" + b"1," * (15 * 1024 * 1024) + b"1]")
    before = rss(proxy.web.popen.pid)
    with PeakMemory(proxy.web.popen.pid) as memory:
        for framing in ("honest", "chunked"):
            status, answer = raw_post(proxy.http, token, body, framing)
            assert status == 413, framing
            assert json.loads(answer) == {
                "detail": f"Request body larger than the limit of {LIMIT} bytes."
            }
    logger.info(f"daphne RSS {before >> 20} MB, peak {memory.peak >> 20} MB")
    assert memory.peak - before < 5 * 1024 * 1024, (before, memory.peak)
    assert '"POST /api/files/"' not in proxy.web.output()
    assert not File.objects.exists()
    assert stored_paths() == before_files

    with proxy.client(headers={"Authorization": f"Token {token}"}) as client:
        created = client.post(
            "/api/files/", files={"file": ("m.json", server_4_bytes())}
        )
    assert created.status_code == 201, created.text
    assert '"POST /api/files/" 201' in proxy.web.output()


@pytest.mark.django_db(transaction=True)
def test_a_resumable_upload_passes_chunk_by_chunk_and_a_larger_chunk_does_not(proxy):
    """Through nginx a file over the single-request limit arrives in chunks: the
    upload's Location is the proxy's HTTPS address, each chunk passes, and a chunk
    over its limit is refused by nginx as JSON before daphne sees it."""
    content = b"[" + b"1," * (LIMIT // 2) + b"1]"  # over LIMIT in all
    headers = {
        "Authorization": f"Token {token_for(user_create())}",
        "Tus-Resumable": "1.0.0",
    }
    with proxy.client(headers=headers) as client:
        created = client.post(
            "/api/uploads/", headers={"Upload-Length": str(len(content))}
        )
        assert created.status_code == 201, created.text
        url = created.headers["Location"]
        assert url.startswith(f"{proxy.base_url}/api/uploads/")

        too_large = client.patch(
            url,
            content=content[: CHUNK_LIMIT + 1],
            headers={"Content-Type": CHUNK, "Upload-Offset": "0"},
        )
        assert too_large.status_code == 413
        assert too_large.json() == {
            "detail": f"Chunk larger than the limit of {CHUNK_LIMIT} bytes."
        }
        assert '"PATCH /api/uploads/' not in proxy.web.output()

        for offset in range(0, len(content), CHUNK_LIMIT):
            chunk = content[offset : offset + CHUNK_LIMIT]
            answer = client.patch(
                url,
                content=chunk,
                headers={"Content-Type": CHUNK, "Upload-Offset": str(offset)},
            )
            assert answer.status_code == 204, answer.text
    file = File.objects.get(pk=int(answer.headers["DwellFi-File-Id"]))
    assert file.size == len(content) > LIMIT


@pytest.mark.django_db(transaction=True)
def test_websockets_pass_through_the_proxy_over_tls(proxy):
    """wss:// through nginx's TLS: the upgrade reaches daphne, the socket is
    authenticated by its token, gets its snapshot and answers a ping."""
    token = token_for(user_create())
    url = f"wss://127.0.0.1:{proxy.https}/notification/events?token={token}"
    with connect(url, ssl=proxy.tls(), open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "snapshot"
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "pong"


@pytest.mark.django_db(transaction=True)
def test_downloads_are_sent_by_nginx_from_the_protected_location(proxy):
    """daphne checks the owner and answers with headers only (X-Accel-Redirect);
    nginx sends the bytes with their length and the attachment headers. The
    internal location cannot be asked for directly. 20 parallel downloads of a
    200 MB file leave daphne's memory where it was."""
    user = user_create()
    headers = {"Authorization": f"Token {token_for(user)}"}
    with proxy.client(headers=headers) as client:
        created = client.post(
            "/api/files/", files={"file": ("m.json", server_4_bytes())}
        ).json()
        download = client.get(f"/api/files/{created['id']}/download/")
        assert download.status_code == 200
        assert download.content == server_4_bytes()
        assert download.headers["Content-Length"] == str(len(server_4_bytes()))
        assert download.headers["Content-Type"] == "application/octet-stream"
        assert (
            download.headers["Content-Disposition"] == 'attachment; filename="m.json"'
        )
        assert download.headers["X-Content-Type-Options"] == "nosniff"
        assert "X-Accel-Redirect" not in download.headers
        stored = File.objects.get(pk=created["id"]).content.name
        assert client.get(f"/_protected/{stored}").status_code == 404
    # daphne sent no body for it: its access log line has no size.
    line = f'"GET /api/files/{created["id"]}/download/" 200 -\n'
    assert line in proxy.web.output()

    file = big_file(user, Path(settings.MEDIA_ROOT))
    results: list[tuple[int, int]] = []

    def fetch() -> None:
        url = f"/api/files/{file.pk}/download/"
        with (
            proxy.client(headers=headers, timeout=120) as client,
            client.stream("GET", url) as response,
        ):
            received = sum(len(chunk) for chunk in response.iter_raw(1 << 20))
            results.append((response.status_code, received))

    try:
        before, peak = parallel_downloads(proxy.web.popen.pid, fetch)
    finally:
        (Path(settings.MEDIA_ROOT) / file.content.name).unlink()
    assert results == [(200, BIG)] * PARALLEL
    assert peak - before < 10 * 1024 * 1024, (before, peak)


def test_static_files_are_served_by_nginx(proxy):
    """The collected files, hashed names and their gzip twins, straight from the
    static root: daphne never sees the request."""
    manifest = json.loads((proxy.static / "staticfiles.json").read_text())
    hashed = manifest["paths"]["css/app.css"]
    original = (Path(settings.BASE_DIR) / "static" / "css" / "app.css").read_bytes()
    with proxy.client() as client:
        plain = client.get(f"/static/{hashed}", headers={"Accept-Encoding": "identity"})
        zipped = client.get(f"/static/{hashed}", headers={"Accept-Encoding": "gzip"})
    assert plain.status_code == 200
    assert plain.content == original
    assert plain.headers["Content-Type"] == "text/css"
    assert plain.headers["X-Content-Type-Options"] == "nosniff"
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.content == original  # httpx decodes it
    assert "/static/" not in proxy.web.output()


@pytest.mark.django_db(transaction=True)
def test_the_proxy_tells_django_the_scheme_and_the_real_client_address(proxy):
    """Plain HTTP is redirected to HTTPS by Django, HTTPS answers carry HSTS: the
    scheme arrives in X-Forwarded-Proto. A client's own X-Forwarded-For is
    replaced by its real address, so it cannot dodge the sign-in limit by
    inventing addresses: the failed attempt is counted for 127.0.0.1."""
    from axes.models import AccessAttempt

    plain = httpx.get(f"http://127.0.0.1:{proxy.http}/api/files/")
    assert plain.status_code == 301
    assert plain.headers["Location"].startswith("https://127.0.0.1")
    with proxy.client() as client:
        secure = client.get("/api/files/")
        assert secure.status_code == 401
        assert "max-age=31536000" in secure.headers["Strict-Transport-Security"]

        user = user_create()
        headers = {
            "Referer": f"{proxy.base_url}/login/",  # Django's CSRF check over HTTPS
            "X-Forwarded-For": "203.0.113.9",
        }
        refused = sign_in(client, user.username, "wrong", **headers)
        assert refused.status_code == 200
        assert "Please enter a correct username and password" in refused.text
    attempt = AccessAttempt.objects.get(username=user.username)
    assert attempt.ip_address == "127.0.0.1"


@pytest.mark.skipif(
    not shutil.which("docker-compose"),
    reason="needs docker-compose: apt-get install docker-compose",
)
def test_docker_compose_puts_nginx_in_front_of_daphne(tmp_path):
    """`docker-compose config` accepts the file (with .env from .env.example); only
    nginx publishes ports, with the repository's template, the certificates, and
    the volumes whose files it serves; daphne trusts its proxy headers and hands
    downloads to the internal location the template defines."""
    import yaml

    base = Path(settings.BASE_DIR)
    shutil.copy(base / "docker-compose.yml", tmp_path)
    shutil.copy(base / ".env.example", tmp_path / ".env")
    shutil.copytree(base / "deploy", tmp_path / "deploy")
    result = subprocess.run(
        ["docker-compose", "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"nginx"}
    nginx, web = services["nginx"], services["web"]
    assert nginx["image"].startswith("nginx:")
    mounts = {volume.split(":")[1] for volume in nginx["volumes"]}
    assert {"/etc/nginx/templates", "/etc/nginx/certs"} <= mounts
    assert {"/data/static", "/data/media"} <= mounts
    assert nginx["environment"]["DWELLFI_MAX_UPLOAD_BYTES"] == "209715200"
    assert "--proxy-headers" in web["command"]
    prefix = web["environment"]["DWELLFI_X_ACCEL_PREFIX"]
    assert f"location {prefix} {{\n        internal;" in TEMPLATE.read_text()
