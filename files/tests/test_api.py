"""The HTTP API: every route, isolation between users, the seed's shapes, bad input."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError, connection
from rest_framework.test import APIClient

from files import services
from files.models import File

from .factories import broken_bytes, server_4_bytes, upload

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]

FILE_FIELDS = {
    "id",
    "name",
    "size",
    "sha256",
    "kind",
    "status",
    "progress",
    "error",
    "summary",
    "record_count",
    "invalid_record_count",
    "anomaly_count",
    "generation",
    "attempts",
    "task_id",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "last_event_id",
}
SEED_FIELDS = {
    "id",
    "filename",
    "size",
    "type",
    "is_processed",
    "meta_data",
    "task_id",
    "task_status",
    "created_at",
    "updated_at",
    "created_by_id",
    "updated_by_id",
}


def post_file(api: APIClient, content: bytes = b"", name: str = "metrics.json"):
    return api.post(
        "/api/files/",
        {"file": SimpleUploadedFile(name, content or server_4_bytes())},
        format="multipart",
    )


def processed_file(user, content: bytes | None = None) -> File:
    file = services.file_create(owner=user, upload=upload(content or server_4_bytes()))
    services.file_process(file_id=file.pk, task_id=file.task_id)
    file.refresh_from_db()
    return file


def test_upload_returns_the_queued_file_resource(api, user):
    response = post_file(api)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == FILE_FIELDS
    assert body["status"] == "queued" and body["name"] == "metrics.json"
    assert body["size"] == len(server_4_bytes()) and body["task_id"]
    assert File.objects.get(pk=body["id"]).owner == user


def test_anonymous_requests_are_refused_as_json():
    response = APIClient().get("/api/files/")
    assert response.status_code == 401
    assert "detail" in response.json()


def test_list_is_paginated_filtered_searched_and_ordered(api, user, rules):
    processed_file(user)
    post_file(api, b"[1]", name="alpha.json")
    post_file(api, b"[2]", name="beta.json")

    body = api.get("/api/files/").json()
    assert body["count"] == 3 and len(body["results"]) == 3
    assert api.get("/api/files/?status=processed").json()["count"] == 1
    assert api.get("/api/files/?kind=server_metrics").json()["count"] == 1
    assert [f["name"] for f in api.get("/api/files/?search=alp").json()["results"]] == [
        "alpha.json"
    ]
    names = [f["name"] for f in api.get("/api/files/?ordering=name").json()["results"]]
    assert names == sorted(names)
    assert len(api.get("/api/files/?page_size=2").json()["results"]) == 2


def test_a_user_sees_only_their_own_files(api, other_user, rules):
    theirs = processed_file(other_user)
    assert api.get("/api/files/").json()["count"] == 0
    for method, path in [
        ("get", f"/api/files/{theirs.pk}/"),
        ("delete", f"/api/files/{theirs.pk}/"),
        ("post", f"/api/files/{theirs.pk}/reprocess/"),
        ("get", f"/api/files/{theirs.pk}/anomalies/"),
        ("get", f"/api/files/{theirs.pk}/errors/"),
        ("get", f"/api/files/{theirs.pk}/metrics/"),
        ("get", f"/api/files/{theirs.pk}/download/"),
        ("get", f"/files/files/{theirs.pk}"),
        ("get", f"/files/{theirs.pk}"),
    ]:
        response = getattr(api, method)(path)
        assert response.status_code == 404, path
        assert response.json() == {"detail": "Not found."}, path
    response = api.put(
        f"/api/files/{theirs.pk}/", {"file": upload(b"[1]")}, format="multipart"
    )
    assert response.status_code == 404
    assert File.objects.filter(pk=theirs.pk, status="processed").exists()


def test_results_routes(api, user, rules):
    file = processed_file(user)

    detail = api.get(f"/api/files/{file.pk}/").json()
    assert detail["anomaly_count"] == 27 and detail["status"] == "processed"
    anomalies = api.get(f"/api/files/{file.pk}/anomalies/?page_size=5").json()
    assert anomalies["count"] == 27 and len(anomalies["results"]) == 5
    assert set(anomalies["results"][0]) == {
        "id",
        "record_index",
        "server",
        "timestamp",
        "metric",
        "value",
        "min_value",
        "max_value",
    }
    assert api.get(f"/api/files/{file.pk}/errors/").json()["count"] == 0

    series = api.get(f"/api/files/{file.pk}/metrics/?metric=cpu_usage&points=3").json()
    assert series["points"] == 3 and series["record_count"] == 9
    assert max(b["max"] for b in series["series"]) == 860
    assert min(b["min"] for b in series["series"]) == 92
    assert series["rule"] == {"min": 0, "max": 85}
    assert api.get(f"/api/files/{file.pk}/metrics/?metric=nope").status_code == 400

    download = api.get(f"/api/files/{file.pk}/download/")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == server_4_bytes()
    assert download["Content-Disposition"].startswith("attachment;")
    assert download["X-Content-Type-Options"] == "nosniff"


def test_the_series_keeps_every_spike_within_the_points_asked(api, user, rules):
    records = [
        {
            "timestamp": f"2024-09-19T10:{n // 60:02d}:{n % 60:02d}Z",
            "cpu_usage": 999 if n == 537 else (None if n % 7 == 0 else n % 50),
        }
        for n in range(1000)
    ]
    content = json.dumps({"server_id": "s", "metrics": records}).encode()
    file = processed_file(user, content)

    series = api.get(f"/api/files/{file.pk}/metrics/?metric=cpu_usage&points=10").json()

    assert series["points"] == len(series["series"]) == 10
    assert series["record_count"] == 1000 - len(range(0, 1000, 7))  # nulls skipped
    assert sum(b["count"] for b in series["series"]) == series["record_count"]
    spiked = [b for b in series["series"] if b["max"] == 999]
    assert len(spiked) == 1 and spiked[0]["start"] <= "2024-09-19T10:08:57Z"
    assert all(b["min"] >= 0 for b in series["series"])


def test_a_metric_in_part_of_the_file_still_gets_the_points_asked(api, user, rules):
    records = [
        {
            "timestamp": f"2024-09-19T10:{n // 60:02d}:{n % 60:02d}Z",
            **({"disk_read": n} if n >= 900 else {}),
        }
        for n in range(1000)
    ]
    content = json.dumps({"server_id": "s", "metrics": records}).encode()
    file = processed_file(user, content)

    series = api.get(f"/api/files/{file.pk}/metrics/?metric=disk_read&points=10").json()

    assert series["points"] == 10 and series["record_count"] == 100
    assert [b["count"] for b in series["series"]] == [10] * 10
    assert series["series"][-1]["max"] == 999


def test_validation_errors_route_lists_pointers(api, user, rules):
    document = json.loads(server_4_bytes())
    document["metrics"][3] = ["not", "an", "object"]
    file = processed_file(user, json.dumps(document).encode())
    errors = api.get(f"/api/files/{file.pk}/errors/").json()
    assert errors["count"] == 1
    assert errors["results"][0]["pointer"] == "/metrics/3"


def test_put_replaces_content_and_reprocess_queues_again(api, user, rules):
    file = processed_file(user)
    response = api.put(
        f"/api/files/{file.pk}/",
        {"file": upload(b"[1, 2]", "v2.json")},
        format="multipart",
    )
    assert response.status_code == 200
    assert (
        response.json()["status"] == "queued" and response.json()["name"] == "v2.json"
    )

    response = api.post(f"/api/files/{file.pk}/reprocess/")
    assert response.status_code == 202 and response.json()["status"] == "queued"


def test_delete_removes_the_file(api, user, rules):
    file = processed_file(user)
    assert api.delete(f"/api/files/{file.pk}/").status_code == 204
    assert api.get(f"/api/files/{file.pk}/").status_code == 404


@pytest.mark.parametrize(
    ("content", "status"),
    [(None, 400), (b"", 400), (b"\x00\x01binary", 400), (b"   ", 400)],
)
def test_bad_uploads_get_json_errors(api, content, status):
    data = {} if content is None else {"file": SimpleUploadedFile("x.json", content)}
    response = api.post("/api/files/", data, format="multipart")
    assert response.status_code == status
    assert response.json()["detail"]
    assert not File.objects.exists()


def test_uploads_over_the_limit_are_refused_with_413(api, settings):
    settings.DWELLFI_MAX_UPLOAD_BYTES = 100
    response = post_file(api, b"[" + b"1," * 200 + b"1]")
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert not File.objects.exists()


def test_a_malformed_upload_is_accepted_then_fails_in_processing(api, user, rules):
    body = post_file(api, broken_bytes()).json()
    file = File.objects.get(pk=body["id"])
    services.file_process(file_id=file.pk, task_id=file.task_id)
    failed = api.get(f"/api/files/{file.pk}/").json()
    assert failed["status"] == "failed"
    assert (failed["error"]["line"], failed["error"]["column"]) == (13, 20)


def test_events_after_a_cursor(api, user, rules):
    processed_file(user)
    everything = api.get("/api/events/").json()["results"]
    assert [e["id"] for e in everything] == [1, 2, 3, 4, 5]
    later = api.get("/api/events/?after=3").json()["results"]
    assert [e["type"] for e in later] == ["file.anomalies", "notification"]
    assert api.get("/api/events/?after=x").status_code == 400


def test_deeply_nested_json_body_is_a_400_not_a_500(api):
    body = "[" * 100_000 + "]" * 100_000
    response = api.post("/api/events/", body, content_type="application/json")
    assert response.status_code in (400, 405)
    response = api.generic(
        "OPTIONS", "/api/files/", body, content_type="application/json"
    )
    assert response.status_code < 500


def test_unknown_api_routes_answer_json_404(api):
    response = api.get("/api/nothing-here/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_schema_and_docs_are_served_without_a_cdn(api, user, client):
    schema = api.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert "/api/files/{id}/metrics/" in paths and "/files/uploadfile/" in paths
    client.force_login(user)
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower() and b"/static/" in docs.content


# --- the seed's routes ---------------------------------------------------------------


def test_seed_upload_keeps_the_seed_shape(api, user):
    response = api.post(
        "/files/uploadfile/",
        {
            "file": SimpleUploadedFile("raw.json", server_4_bytes()),
            "file_data_create_form": json.dumps(
                {"filename": "nice.json", "type": "metrics"}
            ),
        },
        format="multipart",
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == SEED_FIELDS
    assert (body["filename"], body["type"], body["task_status"]) == (
        "nice.json",
        "metrics",
        "processing",
    )
    assert body["is_processed"] is False
    assert body["created_by_id"] == body["updated_by_id"] == str(user.pk)
    assert body["meta_data"] == {"statistics": {}, "metrics": []}


def test_seed_upload_refuses_a_malformed_form_field(api):
    response = api.post(
        "/files/uploadfile/",
        {
            "file": SimpleUploadedFile("raw.json", b"[1]"),
            "file_data_create_form": "{oops",
        },
        format="multipart",
    )
    assert response.status_code == 400 and response.json()["detail"]


def test_seed_reads(api, user, rules):
    file = processed_file(user)
    listing = api.get("/files/files/").json()
    assert [f["id"] for f in listing] == [file.pk]
    # The list stays small: the statistics, not the records.
    assert "metrics" not in listing[0]["meta_data"]
    assert listing[0]["meta_data"]["statistics"]["cpu_usage"]["max"] == 860
    for path in (f"/files/files/{file.pk}", f"/files/{file.pk}", f"/files/{file.pk}/"):
        body = api.get(path).json()
        assert set(body) == SEED_FIELDS
        assert body["is_processed"] is True and body["task_status"] == "processed"
        assert body["meta_data"]["anomaly_count"] == 27
        assert len(body["meta_data"]["metrics"]) == 9


def test_seed_task_status_is_the_error_text(api, user, rules):
    file = processed_file(user, broken_bytes())
    body = api.get(f"/files/files/{file.pk}").json()
    assert body["task_status"].endswith("(line 13, column 20; byte offset 198)")


def test_seed_update_changes_details_and_content(api, user, rules):
    file = processed_file(user)
    response = api.put(
        f"/files/updatefile/{file.pk}",
        {"file_update_form": json.dumps({"filename": "renamed.json"})},
        format="multipart",
    )
    assert response.status_code == 200
    assert response.json()["filename"] == "renamed.json"
    assert response.json()["task_status"] == "processed"

    response = api.put(
        f"/files/updatefile/{file.pk}",
        {"file": SimpleUploadedFile("v2.json", b"[1]")},
        format="multipart",
    )
    assert response.status_code == 200
    assert response.json()["task_status"] == "processing"


# --- CORS: a browser build of a client on another origin ----------------------------

APP_ORIGIN = "http://localhost:55955"


def test_a_preflight_for_put_with_a_token_is_answered(client, settings, user):
    settings.CORS_ALLOWED_ORIGINS = [APP_ORIGIN]
    file = services.file_create(owner=user, upload=upload(server_4_bytes()))
    response = client.options(
        f"/files/updatefile/{file.pk}",
        HTTP_ORIGIN=APP_ORIGIN,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="PUT",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,content-type",
    )
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "PUT" in response["Access-Control-Allow-Methods"]
    assert "authorization" in response["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in response
    assert response["X-Content-Type-Options"] == "nosniff"  # after SecurityMiddleware


def test_answers_to_an_allowed_origin_carry_the_cors_header(api, settings):
    settings.CORS_ALLOWED_ORIGINS = [APP_ORIGIN]
    allowed = api.get("/files/files/", HTTP_ORIGIN=APP_ORIGIN)
    assert allowed["Access-Control-Allow-Origin"] == APP_ORIGIN
    other = api.get("/files/files/", HTTP_ORIGIN="https://evil.example")
    assert "Access-Control-Allow-Origin" not in other
    page = api.get("/login/", HTTP_ORIGIN=APP_ORIGIN)  # only the API
    assert "Access-Control-Allow-Origin" not in page


def test_no_origin_is_allowed_by_default(api):
    response = api.get("/api/files/", HTTP_ORIGIN=APP_ORIGIN)
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response


def test_sqlite_busy_past_its_timeout_is_a_503_to_try_again(
    api, user, rules, monkeypatch
):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's single write lock")
    file = processed_file(user)

    def locked(**kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(services, "file_reprocess", locked)
    response = api.post(f"/api/files/{file.pk}/reprocess/")
    assert response.status_code == 503
    assert response["Retry-After"] == "10"
    assert "busy" in response.json()["detail"]
