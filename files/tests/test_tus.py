"""Resumable uploads (tus 1.0) at /api/uploads/, in process: the protocol, owners,
limits, the file the last chunk creates, expiry."""

import base64
import hashlib
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from files import leftovers, resumable, services
from files.models import File, Upload

from .factories import server_4_bytes
from .test_security import csrf_token

# Bytes go and tasks are sent after commit: the tests commit.
pytestmark = pytest.mark.django_db(transaction=True)

TUS = {"HTTP_TUS_RESUMABLE": "1.0.0"}
CHUNK = "application/offset+octet-stream"


def metadata(**values: str) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}"
        for key, value in values.items()
    )


def create(client, length: int, name: str = "big.json") -> str:
    response = client.post(
        "/api/uploads/",
        HTTP_UPLOAD_LENGTH=str(length),
        HTTP_UPLOAD_METADATA=metadata(filename=name, filetype="application/json"),
        **TUS,
    )
    assert response.status_code == 201, response.content
    assert response["Tus-Resumable"] == "1.0.0"
    return response["Location"]


def patch(client, url: str, offset: int, data: bytes, **headers):
    return client.generic(
        "PATCH",
        url,
        data,
        content_type=CHUNK,
        HTTP_UPLOAD_OFFSET=str(offset),
        **{**TUS, **headers},
    )


def stored_path(url: str) -> Path:
    upload = Upload.objects.get(pk=url.rstrip("/").rsplit("/", 1)[1])
    return Path(settings.MEDIA_ROOT) / upload.content


def test_chunks_make_a_file_through_the_upload_service(api, user, sent):
    content = server_4_bytes()
    url = create(api, len(content), "server_4.json")
    assert url.startswith("http://testserver/api/uploads/")

    head = api.head(url, **TUS)
    assert (head.status_code, head["Upload-Offset"]) == (200, "0")
    assert head["Upload-Length"] == str(len(content))
    assert "GMT" in head["Upload-Expires"]

    first = patch(api, url, 0, content[:100])
    assert (first.status_code, first["Upload-Offset"]) == (204, "100")
    assert "DwellFi-File-Id" not in first
    assert api.get(url).json()["file"] is None
    assert not sent

    last = patch(api, url, 100, content[100:])
    assert (last.status_code, last["Upload-Offset"]) == (204, str(len(content)))
    file = File.objects.get(pk=int(last["DwellFi-File-Id"]))
    assert (file.owner, file.name, file.size) == (user, "server_4.json", len(content))
    assert file.sha256 == hashlib.sha256(content).hexdigest()
    assert file.content.read() == content  # the upload's bytes, not a copy's
    assert file.content.name == Upload.objects.get().content
    assert file.status == File.Status.QUEUED and sent == [file.pk]

    state = api.get(url).json()
    assert state | {"expires": None} == {
        "id": url.rstrip("/").rsplit("/", 1)[1],
        "offset": len(content),
        "length": len(content),
        "expires": None,
        "file": file.pk,
    }
    # A finished upload's row can go; its bytes are the file's.
    assert api.delete(url, **TUS).status_code == 204
    assert file.content.storage.exists(file.content.name)


def test_options_advertise_the_protocol_without_credentials(settings):
    response = APIClient().options("/api/uploads/")
    assert response.status_code == 204
    assert response["Tus-Version"] == "1.0.0"
    assert set(response["Tus-Extension"].split(",")) >= {
        "creation",
        "termination",
        "expiration",
        "checksum",
    }
    assert response["Tus-Max-Size"] == str(settings.DWELLFI_MAX_RESUMABLE_BYTES)


def test_another_users_upload_is_not_found(api, other_user):
    url = create(api, 10)
    other = APIClient()
    other.credentials(
        HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=other_user).key}"
    )
    assert other.head(url, **TUS).status_code == 404
    assert other.get(url, **TUS).status_code == 404
    assert patch(other, url, 0, b"{}").status_code == 404
    assert other.delete(url, **TUS).status_code == 404
    assert api.head(url, **TUS)["Upload-Offset"] == "0"
    assert APIClient().head(url, **TUS).status_code == 401


def test_protocol_errors_are_clear(api, settings):
    url = create(api, 10)
    assert api.head(url).status_code == 412  # no Tus-Resumable
    wrong = api.head(url, HTTP_TUS_RESUMABLE="0.2.2")
    assert (wrong.status_code, wrong["Tus-Version"]) == (412, "1.0.0")
    plain = api.generic("PATCH", url, b"{}", content_type="application/json", **TUS)
    assert plain.status_code == 415
    assert patch(api, url, 0, b"{").status_code == 204
    conflict = patch(api, url, 0, b"{")
    assert (conflict.status_code, conflict["Upload-Offset"]) == (409, "1")
    assert "the upload's is 1" in conflict.json()["detail"]
    assert patch(api, url, 1, b"x" * 10).status_code == 400  # past Upload-Length
    missing = api.post("/api/uploads/", **TUS)
    assert missing.status_code == 400
    assert "Upload-Length" in missing.json()["detail"]
    bad = api.post(
        "/api/uploads/",
        HTTP_UPLOAD_LENGTH="5",
        HTTP_UPLOAD_METADATA="filename %%",
        **TUS,
    )
    assert bad.status_code == 400
    settings.DWELLFI_MAX_RESUMABLE_BYTES = 100
    assert api.post("/api/uploads/", HTTP_UPLOAD_LENGTH="101", **TUS).status_code == 413
    assert api.head(url, **TUS)["Upload-Offset"] == "1"


def test_a_chunk_over_the_limit_is_refused_and_not_stored(api, settings):
    settings.DWELLFI_UPLOAD_CHUNK_BYTES = 1000
    url = create(api, 5000)
    response = patch(api, url, 0, b"[" + b"0," * 600)
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["detail"]
    assert api.head(url, **TUS)["Upload-Offset"] == "0"
    assert stored_path(url).stat().st_size == 0
    assert patch(api, url, 0, b"[" + b"0," * 400).status_code == 204


def test_checksums_are_checked(api, sent):
    url = create(api, 4)
    good = base64.b64encode(hashlib.sha1(b"[1,2").digest()).decode()
    bad = base64.b64encode(hashlib.sha1(b"nope").digest()).decode()
    mismatch = patch(api, url, 0, b"[1,2", HTTP_UPLOAD_CHECKSUM=f"sha1 {bad}")
    assert mismatch.status_code == 460
    assert stored_path(url).stat().st_size == 0
    unknown = patch(api, url, 0, b"[1,2", HTTP_UPLOAD_CHECKSUM=f"crc32 {good}")
    assert unknown.status_code == 400
    ok = patch(api, url, 0, b"[1,2", HTTP_UPLOAD_CHECKSUM=f"sha1 {good}")
    assert ok.status_code == 204 and sent == [int(ok["DwellFi-File-Id"])]


def test_method_override_for_clients_that_only_post(api, sent):
    url = create(api, 2)
    response = api.generic(
        "POST",
        url,
        b"{}",
        content_type=CHUNK,
        HTTP_UPLOAD_OFFSET="0",
        HTTP_X_HTTP_METHOD_OVERRIDE="PATCH",
        **TUS,
    )
    assert response.status_code == 204 and response["DwellFi-File-Id"]
    other = create(api, 2)
    gone = api.post(other, HTTP_X_HTTP_METHOD_OVERRIDE="DELETE", **TUS)
    assert gone.status_code == 204 and api.head(other, **TUS).status_code == 404


def test_terminating_removes_the_bytes(api):
    url = create(api, 10)
    patch(api, url, 0, b"[1,")
    path = stored_path(url)
    assert path.exists()
    assert api.delete(url, **TUS).status_code == 204
    assert not path.exists()
    assert api.head(url, **TUS).status_code == 404


def test_a_session_needs_the_csrf_token(user, sent):
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)
    assert browser.post("/api/uploads/", HTTP_UPLOAD_LENGTH="2", **TUS).status_code == (
        403
    )
    token = csrf_token(browser)
    url = create_with(browser, token)
    assert patch(browser, url, 0, b"{}").status_code == 403
    done = patch(browser, url, 0, b"{}", HTTP_X_CSRFTOKEN=token)
    assert done.status_code == 204, done.content
    assert done["DwellFi-File-Id"]


def create_with(client, token: str) -> str:
    response = client.post(
        "/api/uploads/", HTTP_UPLOAD_LENGTH="2", HTTP_X_CSRFTOKEN=token, **TUS
    )
    assert response.status_code == 201
    return response["Location"]


def test_a_file_the_service_refuses_ends_its_upload(api, sent):
    url = create(api, 9)
    path = stored_path(url)
    response = patch(api, url, 0, b"<html>..!")
    assert response.status_code == 400
    assert response.json()["detail"] == "file: The submitted file is not JSON."
    assert not path.exists() and not Upload.objects.exists() and not sent


def test_quotas_count_unfinished_uploads(api, user, settings, sent):
    settings.DWELLFI_QUOTA_BYTES = 100
    create(api, 60)
    refused = api.post("/api/uploads/", HTTP_UPLOAD_LENGTH="60", **TUS)
    assert refused.status_code == 413
    assert "Storage limit" in refused.json()["detail"]


def test_expired_uploads_go_with_their_bytes(api, sent):
    unfinished = create(api, 10)
    patch(api, unfinished, 0, b"[1,")
    finished = create(api, 2)
    file_id = int(patch(api, finished, 0, b"{}")["DwellFi-File-Id"])
    fresh = create(api, 10)
    paths = {url: stored_path(url) for url in (unfinished, finished, fresh)}
    past = timezone.now() - timedelta(seconds=1)
    Upload.objects.exclude(pk=fresh.rstrip("/").rsplit("/", 1)[1]).update(expires=past)

    assert api.head(unfinished, **TUS).status_code == 410
    assert patch(api, unfinished, 3, b"2]").status_code == 410
    assert resumable.uploads_expire() == 2

    assert not paths[unfinished].exists()
    assert paths[finished].exists()  # the file's bytes
    assert File.objects.get(pk=file_id).content.read() == b"{}"
    assert paths[fresh].exists()
    assert api.head(unfinished, **TUS).status_code == 404
    assert list(Upload.objects.values_list("offset", flat=True)) == [0]


def test_the_leftovers_sweep_keeps_an_unfinished_uploads_bytes(api):
    url = create(api, 10)
    patch(api, url, 0, b"[1,")
    Upload.objects.update(created_at=timezone.now() - timedelta(days=3))
    old = (timezone.now() - timedelta(days=3)).timestamp()
    os.utime(stored_path(url), (old, old))
    leftovers.files_sweep_leftovers()  # other tests' stray bytes may go
    assert stored_path(url).exists()


def test_the_beat_schedule_expires_uploads(settings):
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "files.tasks.expire_uploads" in tasks
    assert reverse("upload-list") == "/api/uploads/"


def test_a_chunk_larger_than_a_form_may_be_is_taken(api, sent):
    """A chunk is read as a stream: Django's 2.5 MB limit on form bodies does not
    apply, only DWELLFI_UPLOAD_CHUNK_BYTES."""
    content = b"[" + b"1," * 1_500_000 + b"1]"
    assert len(content) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    url = create(api, len(content))
    response = patch(api, url, 0, content)
    assert response.status_code == 204, response.content
    assert File.objects.get(pk=int(response["DwellFi-File-Id"])).size == len(content)


def test_a_nul_in_the_metadata_is_refused(api):
    """As a NUL anywhere else in a request (dwellfi.middleware): nothing
    legitimate sends one, and no text column can hold it."""
    response = api.post(
        "/api/uploads/",
        HTTP_UPLOAD_LENGTH="10",
        HTTP_UPLOAD_METADATA=metadata(filename="a\0b.json"),
        **TUS,
    )
    assert response.status_code == 400
    assert "NUL" in response.json()["detail"]
    assert not Upload.objects.exists()


def replacing(client, file_id, length: int, name: str = "new.jsonl"):
    return client.post(
        "/api/uploads/",
        HTTP_UPLOAD_LENGTH=str(length),
        HTTP_UPLOAD_METADATA=metadata(filename=name, replaces=str(file_id)),
        **TUS,
    )


def test_an_upload_can_replace_a_files_content(api, user, sent):
    old = server_4_bytes()
    original = File.objects.get(
        pk=int(patch(api, create(api, len(old)), 0, old)["DwellFi-File-Id"])
    )
    old_path = Path(original.content.path)
    new = (
        b'{"server_id": "web-1", "timestamp": "2024-09-19T10:00:00Z", "cpu_usage": 5}\n'
    )
    response = replacing(api, original.pk, len(new))
    assert response.status_code == 201
    url = response["Location"]

    assert "DwellFi-File-Id" not in patch(api, url, 0, new[:10])
    assert File.objects.get(pk=original.pk).content.name == original.content.name
    last = patch(api, url, 10, new[10:])

    assert last.status_code == 204 and last["DwellFi-File-Id"] == str(original.pk)
    file = File.objects.get(pk=original.pk)
    assert (file.name, file.size, file.status) == ("new.jsonl", len(new), "queued")
    assert file.content.read() == new and file.generation == original.generation + 1
    assert file.sha256 == hashlib.sha256(new).hexdigest()
    assert not old_path.exists()  # the old bytes go, as with a PUT
    assert sent == [original.pk, original.pk]
    assert File.objects.count() == 1
    assert api.get(url).json()["file"] == original.pk


@pytest.mark.parametrize("named", ["another user's", "missing", "7x", "-1", "1" * 30])
def test_only_the_callers_own_file_can_be_replaced(api, other_user, named):
    theirs = File.objects.create(owner=other_user, name="t.json", size=2)
    file_id = {"another user's": theirs.pk, "missing": theirs.pk + 1}.get(named, named)

    response = replacing(api, file_id, 10)

    assert response.status_code == 404
    assert response.json()["detail"] == "The file to replace was not found."
    assert not Upload.objects.exists()


def test_an_upload_whose_file_is_deleted_goes_too(api, sent):
    data = b"{}"
    file_id = int(patch(api, create(api, 2), 0, data)["DwellFi-File-Id"])
    url = replacing(api, file_id, 10)["Location"]
    patch(api, url, 0, b"[1,")
    path = stored_path(url)

    assert api.delete(f"/api/files/{file_id}/").status_code == 204

    assert api.head(url, **TUS).status_code == 404
    assert patch(api, url, 3, b"2,3,4]\n").status_code == 404
    assert not File.objects.exists()
    assert resumable.uploads_expire() == 1
    assert not path.exists() and not Upload.objects.filter(replaces__isnull=False)


def test_replacing_counts_the_new_bytes_against_the_quota(api, settings, sent):
    file_id = int(patch(api, create(api, 2), 0, b"{}")["DwellFi-File-Id"])
    settings.DWELLFI_QUOTA_BYTES = 100

    assert replacing(api, file_id, 100).status_code == 201  # the 2 old bytes go
    refused = replacing(api, file_id, 60)  # 100 pending + 60
    assert refused.status_code == 413 and "Storage limit" in refused.json()["detail"]


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="SQLite serializes the two writers: the race cannot happen there",
)
def test_a_file_deleted_during_the_last_chunk_ends_the_upload(api, monkeypatch, sent):
    """The DELETE lands between the last chunk's upload lock and its file lock: it
    waits for neither (no deadlock), and the chunk is answered 404."""
    file_id = int(patch(api, create(api, 2), 0, b"{}")["DwellFi-File-Id"])
    url = replacing(api, file_id, 2)["Location"]
    path = stored_path(url)
    update = services.file_update

    def deleted_first(**kwargs):
        def delete():
            services.file_delete(file=File.objects.get(pk=file_id))
            connection.close()

        competing = threading.Thread(target=delete)
        competing.start()
        competing.join(timeout=10)
        assert not competing.is_alive()
        return update(**kwargs)

    monkeypatch.setattr(services, "file_update", deleted_first)

    assert patch(api, url, 0, b"[]").status_code == 404
    assert not File.objects.exists() and not path.exists()
    assert not Upload.objects.filter(replaces__isnull=False).exists()
