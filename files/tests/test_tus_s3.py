"""Resumable uploads into S3 (django-storages) against an S3 endpoint of the test's
own (moto's server on a free port): chunks become the parts of a multipart upload,
bytes short of S3's least part wait in a tail object, the last chunk completes it,
and the worker reads the file from there."""

from datetime import timedelta

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from dwellfi.processes import free_port
from files import leftovers, resumable, services
from files.models import File, Upload

from .factories import expected_anomalies, metrics_bytes
from .test_tus import TUS, create, patch

# Bytes go and tasks are sent after commit: the tests commit.
pytestmark = pytest.mark.django_db(transaction=True)

BUCKET = "dwellfi-uploads"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_endpoint():
    """A private S3 endpoint for the module's tests."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, settings, monkeypatch):
    """An empty bucket, the media storage for the test; a client to look into it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    httpx.post(f"{s3_endpoint}/moto-api/reset").raise_for_status()
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": s3_endpoint,
                "region_name": "us-east-1",
                "file_overwrite": False,
                "max_memory_size": MiB,
            },
        },
    }
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


def objects(client) -> dict[str, int]:
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {entry["Key"]: entry["Size"] for entry in listed}


def in_progress(client) -> list[str]:
    listed = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    return [entry["Key"] for entry in listed]


def upload_of(url: str) -> Upload:
    return Upload.objects.get(pk=url.rstrip("/").rsplit("/", 1)[1])


def test_small_chunks_wait_for_a_part_and_the_file_is_processed_from_s3(
    api, bucket, rules, sent
):
    content = metrics_bytes(45_000)
    assert 6 * MiB < len(content) < 8 * MiB
    url = create(api, len(content), "big.json")
    cuts = [0, 2 * MiB, 4 * MiB, 6 * MiB, len(content)]

    for start, end in zip(cuts[:2], cuts[1:3], strict=True):
        response = patch(api, url, start, content[start:end])
        assert (response.status_code, response["Upload-Offset"]) == (204, str(end))
        pending = upload_of(url)
        # Under 5 MiB in all: no part yet, the bytes wait in one tail object.
        assert pending.parts == []
        assert objects(bucket) == {pending.tail: end}
    assert api.head(url, **TUS)["Upload-Offset"] == str(4 * MiB)

    patch(api, url, 4 * MiB, content[4 * MiB : 6 * MiB])
    pending = upload_of(url)
    assert [part["size"] for part in pending.parts] == [6 * MiB]
    assert pending.tail == "" and objects(bucket) == {}
    assert in_progress(bucket) == [pending.content]

    last = patch(api, url, 6 * MiB, content[6 * MiB :])
    assert last.status_code == 204, last.content
    file = File.objects.get(pk=int(last["DwellFi-File-Id"]))
    assert objects(bucket) == {file.content.name: len(content)}
    assert in_progress(bucket) == []
    assert sent == [file.pk]
    with file.content.open("rb") as stored:
        assert stored.read() == content

    services.file_process(file_id=file.pk, task_id=file.task_id)
    file.refresh_from_db()
    assert file.status == File.Status.PROCESSED, file.error
    assert file.records.count() == 45_000
    assert file.anomalies.count() == expected_anomalies(45_000)


def test_one_small_upload_is_one_last_part(api, bucket, sent):
    url = create(api, 2)
    done = patch(api, url, 0, b"{}")
    file = File.objects.get(pk=int(done["DwellFi-File-Id"]))
    assert objects(bucket) == {file.content.name: 2}


def test_terminating_aborts_the_multipart_upload_and_drops_the_tail(api, bucket):
    url = create(api, 10 * MiB)
    patch(api, url, 0, b"[" + b"1," * 1000)
    assert objects(bucket) and in_progress(bucket)
    assert api.delete(url, **TUS).status_code == 204
    assert objects(bucket) == {} and in_progress(bucket) == []


def test_expired_uploads_are_aborted_too(api, bucket):
    url = create(api, 10 * MiB)
    patch(api, url, 0, b"[1,")
    Upload.objects.update(expires=upload_of(url).created_at)
    assert resumable.uploads_expire() == 1
    assert objects(bucket) == {} and in_progress(bucket) == []


def test_the_leftovers_sweep_keeps_a_waiting_tail(api, bucket, monkeypatch):
    url = create(api, 10 * MiB)
    patch(api, url, 0, b"[1,")
    tail = upload_of(url).tail
    stray = "uploads/stray.json"
    bucket.put_object(Bucket=BUCKET, Key=stray, Body=b"{}")
    monkeypatch.setattr(leftovers, "UNREFERENCED_GRACE", timedelta(0))
    assert leftovers.files_sweep_leftovers() == 1
    assert objects(bucket) == {tail: 3}
