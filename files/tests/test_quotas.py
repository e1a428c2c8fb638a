"""Per-user quotas: stored bytes (413), files and files in flight (429), race-safe.

Every refused request stores nothing: no row, no bytes on disk, no event.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token

from conftest import free_port, live_env, start_web
from files import services
from files.exceptions import QuotaExceeded
from files.models import UPLOADS_DIR, File
from notifications.models import Event

from .factories import server_4_bytes, upload, user_create

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]

SIZE = len(server_4_bytes())


@pytest.fixture
def unlimited(settings) -> None:
    """Only the limit a test sets applies."""
    settings.DWELLFI_QUOTA_BYTES = 0
    settings.DWELLFI_QUOTA_FILES = 0
    settings.DWELLFI_QUOTA_PROCESSING = 0


def stored(settings) -> set[str]:
    """The names of the uploaded bytes on disk."""
    folder = Path(settings.MEDIA_ROOT) / UPLOADS_DIR
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


def post(api, content: bytes | None = None, route: str = "/api/files/"):
    return api.post(
        route,
        {"file": SimpleUploadedFile("m.json", content or server_4_bytes())},
        format="multipart",
    )


def put(api, file_id: int, route: str = "/api/files/{}/"):
    return api.put(
        route.format(file_id),
        {"file": SimpleUploadedFile("m.json", server_4_bytes() + b" " * 100)},
        format="multipart",
    )


def processed(user) -> File:
    file = services.file_create(owner=user, upload=upload(server_4_bytes()))
    return services.file_process(file_id=file.pk, task_id=file.task_id)


def refused(response, status: int, words: str, before: dict) -> None:
    """The answer is `status` with a message, and nothing was stored."""
    assert response.status_code == status, response.content
    assert words in response.json()["detail"]
    assert response.json().keys() == {"detail"}
    assert File.objects.count() == before["files"]
    assert Event.objects.count() == before["events"]
    assert stored(before["settings"]) == before["stored"]


def state(settings) -> dict:
    return {
        "files": File.objects.count(),
        "events": Event.objects.count(),
        "stored": stored(settings),
        "settings": settings,
    }


def test_stored_bytes_over_the_quota_get_413_on_every_upload_route(
    api, user, rules, settings, unlimited
):
    settings.DWELLFI_QUOTA_BYTES = 2 * SIZE + 50
    first, second = processed(user), processed(user)
    before = state(settings)
    for route in ("/api/files/", "/files/uploadfile/"):
        refused(post(api, route=route), 413, "Storage limit reached", before)
    # A replacement counts its new size instead of the old one: 100 bytes more.
    for route in ("/api/files/{}/", "/files/updatefile/{}"):
        refused(put(api, first.pk, route), 413, "Storage limit reached", before)
    first.refresh_from_db()
    assert (first.status, first.generation) == ("processed", 1)

    api.delete(f"/api/files/{second.pk}/")
    assert post(api).status_code == 201  # room again
    # A smaller replacement always fits.
    response = api.put(
        f"/api/files/{first.pk}/",
        {"file": SimpleUploadedFile("m.json", b"[1]")},
        format="multipart",
    )
    assert response.status_code == 200


def test_files_over_the_quota_get_429(api, user, rules, settings, unlimited):
    settings.DWELLFI_QUOTA_FILES = 2
    first, _ = processed(user), processed(user)
    before = state(settings)
    for route in ("/api/files/", "/files/uploadfile/"):
        refused(post(api, route=route), 429, "File limit reached", before)
    # Replacing and reprocessing add no file.
    assert put(api, first.pk).status_code == 200
    api.delete(f"/api/files/{first.pk}/")
    assert post(api).status_code == 201


def test_files_in_flight_over_the_quota_get_429_also_on_reprocess(
    api, user, rules, settings, unlimited
):
    settings.DWELLFI_QUOTA_PROCESSING = 2
    done = processed(user)
    queued = [post(api).json()["id"] for _ in range(2)]
    before = state(settings)
    for route in ("/api/files/", "/files/uploadfile/"):
        refused(post(api, route=route), 429, "Processing limit reached", before)
    refused(
        api.post(f"/api/files/{done.pk}/reprocess/"),
        429,
        "Processing limit reached",
        before,
    )
    refused(put(api, done.pk), 429, "Processing limit reached", before)
    # A file already in flight may be replaced or reprocessed: it stays one.
    assert put(api, queued[0]).status_code == 200
    assert api.post(f"/api/files/{queued[1]}/reprocess/").status_code == 202

    file = File.objects.get(pk=queued[0])
    services.file_process(file_id=file.pk, task_id=file.task_id)
    assert api.post(f"/api/files/{done.pk}/reprocess/").status_code == 202


def test_quotas_are_per_user(api, user, other_user, rules, settings, unlimited):
    settings.DWELLFI_QUOTA_FILES = 1
    processed(other_user)
    assert post(api).status_code == 201
    assert post(api).status_code == 429


@pytest.mark.django_db(transaction=True)
def test_two_uploads_at_once_cannot_both_take_the_last_slot(
    user, rules, settings, unlimited, monkeypatch
):
    """Both pass the check before storing and store their bytes; then they meet
    at the owner's lock: one gets the slot, the other is refused and its bytes
    removed."""
    settings.DWELLFI_QUOTA_FILES = 1
    store = services.upload_store
    both_stored = threading.Barrier(2)

    def store_then_wait(content, stored=None):
        fields = store(content, stored)
        both_stored.wait(timeout=10)
        return fields

    monkeypatch.setattr(services, "upload_store", store_then_wait)
    before = stored(settings)

    def attempt(n: int):
        try:
            return services.file_create(owner=user, upload=upload(server_4_bytes()))
        except QuotaExceeded as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(attempt, range(2)))
    files = [o for o in outcomes if isinstance(o, File)]
    errors = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(files) == len(errors) == 1
    assert errors[0].limit == "files"
    assert File.objects.count() == 1
    assert stored(settings) - before == {files[0].stored_name}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_concurrent_uploads_through_daphne_fill_the_quota_exactly(
    live_stack, settings, tmp_path
):
    """Twelve uploads at once to a daphne allowing five files a user: exactly five
    are stored (201), seven are refused (429) and leave no bytes; another user is
    not held back by them."""
    env = {**live_env(settings.MEDIA_ROOT), "DWELLFI_QUOTA_FILES": "5"}
    port = free_port()
    web = start_web(env, tmp_path, port, "web-quota")
    try:
        user, other = user_create(), user_create()
        tokens = {u.pk: Token.objects.create(user=u).key for u in (user, other)}
        before = stored(settings)

        def send(owner) -> int:
            return httpx.post(
                f"http://127.0.0.1:{port}/api/files/",
                headers={"Authorization": f"Token {tokens[owner.pk]}"},
                files={"file": ("m.json", server_4_bytes(), "application/json")},
                timeout=30,
            ).status_code

        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(send, [user] * 12))
        assert sorted(statuses) == [201] * 5 + [429] * 7
        assert send(other) == 201
    finally:
        web.stop()
    assert File.objects.filter(owner=user).count() == 5
    names = {f.stored_name for f in File.objects.all()}
    assert stored(settings) - before == names
