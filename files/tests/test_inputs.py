"""gzip and JSON Lines files (`files/inputs.py`): the engine's entry point, the
upload check, the task and the download."""

import gzip
import io
import json
import tracemalloc
import zlib

import httpx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from websockets.sync.client import connect

from files import inputs, services, tasks
from files.engine import DEFAULT_RULES, DocumentInvalid, DocumentMalformed
from files.inputs import DecompressionFailed
from files.models import File, RecordError
from files.tests.factories import (
    SAMPLES,
    broken_bytes,
    server_4_bytes,
    upload,
    user_create,
)
from files.tests.test_e2e import receive_until
from files.tests.test_e2e import upload as upload_live
from files.tests.test_engine import MemorySink
from files.tests.test_hostile import check_outcome, stored_file
from files.tests.test_ndjson import line

LIMIT = 64 * 1024 * 1024


def run(data: bytes, name: str = "metrics.json", limit: int = LIMIT, progress=None):
    sink = MemorySink()
    outcome = inputs.process(
        lambda: io.BytesIO(data),
        name=name,
        size=len(data),
        rules=DEFAULT_RULES,
        sink=sink,
        max_decompressed=limit,
        on_progress=progress,
    )
    return outcome, sink


def position(error) -> tuple:
    return error.message, error.line, error.column, error.offset


def lines_text(count: int = 5, bad: str | None = None) -> bytes:
    rows = [
        line(f"web-{i % 2}", i % 60, cpu_usage=90 if i % 2 else 10)
        for i in range(count)
    ]
    if bad is not None:
        rows.insert(2, bad)
    return ("\n".join(rows) + "\n").encode()


def spaces_bomb(size: int) -> bytes:
    """A gzip of a JSON array padded with `size` spaces: about size / 1000 bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1024 * 1024)
    parts = [compressor.compress(b"[")]
    parts += [compressor.compress(block) for _ in range(size // len(block))]
    parts.append(compressor.compress(b"1]") + compressor.flush())
    return b"".join(parts)


# --- the engine's entry point --------------------------------------------------------


def test_a_gzip_document_is_processed_like_the_document():
    plain, plain_sink = run(server_4_bytes())
    compressed, sink = run(gzip.compress(server_4_bytes()), name="server_4.json.gz")

    assert (compressed.record_count, compressed.anomaly_count) == (9, 27)
    assert sink.records == plain_sink.records
    assert compressed.summary == plain.summary | {"compression": "gzip"}
    # The summary's size is the decompressed text's.
    assert compressed.summary["size"] == len(server_4_bytes())


def test_gzip_is_told_by_its_magic_bytes_not_its_name():
    outcome, _ = run(gzip.compress(server_4_bytes()), name="export.json")
    assert outcome.record_count == 9
    outcome, _ = run(server_4_bytes(), name="export.json.gz")
    assert "compression" not in outcome.summary


def test_error_positions_refer_to_the_decompressed_text():
    broken = (SAMPLES / "server_1_broken.json").read_bytes()

    with pytest.raises(DocumentMalformed) as caught:
        run(gzip.compress(broken), name="server_1_broken.json.gz")

    assert position(caught.value) == (
        "Expecting ',' or ']' after an array element",
        77,
        20,
        1902,
    )


def test_a_gzip_bomb_fails_at_the_limit_with_memory_flat():
    bomb = spaces_bomb(200 * 1024 * 1024)
    assert len(bomb) < 1024 * 1024

    tracemalloc.start()
    try:
        with pytest.raises(DecompressionFailed) as caught:
            run(bomb, limit=16 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert caught.value.message == (
        "The file decompresses to more than the limit of 16,777,216 bytes"
    )
    assert peak < 8 * 1024 * 1024


def test_a_truncated_or_corrupt_gzip_fails_with_the_reason():
    compressed = gzip.compress(lines_text(50))

    with pytest.raises(DecompressionFailed) as truncated:
        run(compressed[: len(compressed) // 2])
    damaged = bytearray(compressed)
    damaged[-6] ^= 0xFF  # the CRC-32 of the trailer
    with pytest.raises(DecompressionFailed) as corrupt:
        run(bytes(damaged))

    assert truncated.value.message == (
        "The gzip stream is truncated: it ends before its end-of-stream marker"
    )
    assert corrupt.value.message.startswith("The gzip stream is corrupt: CRC check")


def test_progress_of_a_gzip_file_is_the_share_of_compressed_bytes_read():
    compressed = gzip.compress(lines_text(20_000), compresslevel=1)
    fractions: list[float] = []

    run(compressed, name="metrics.jsonl.gz", progress=fractions.append)

    assert len(fractions) > 5
    assert fractions == sorted(fractions)
    assert fractions[len(fractions) // 2] < 0.9
    assert fractions[-1] == 1.0


@pytest.mark.parametrize("name", ["metrics.jsonl", "metrics.ndjson", "m.JSONL.GZ"])
def test_json_lines_by_name(name):
    data = lines_text(5)
    if name.lower().endswith(".gz"):
        data = gzip.compress(data)

    outcome, sink = run(data, name=name)

    assert (outcome.record_count, outcome.anomaly_count) == (5, 2)
    assert outcome.summary["format"] == "ndjson"
    assert [r.server for r in sink.records] == ["web-0", "web-1"] * 2 + ["web-0"]


def test_json_lines_are_detected_without_the_name_saying_so():
    bad = json.dumps({"server_id": "web-0", "timestamp": "2024-09-19T10:00:00Z"})
    outcome, sink = run(lines_text(5, bad=bad[:-1] + ', "cpu_usage": "x"}'))

    assert outcome.summary["format"] == "ndjson"
    assert (outcome.record_count, outcome.invalid_record_count) == (5, 1)
    assert [(i.pointer, i.message) for i in sink.issues] == [
        ("/2/cpu_usage", "cpu_usage must be a number, got string")
    ]


def test_a_detected_json_lines_file_fails_at_its_malformed_line():
    bad = '{"server_id": "web-0", "timestamp": "2024-09-19T10:00:00Z" "cpu_usage": 1}'

    with pytest.raises(DocumentMalformed) as caught:
        run(lines_text(5, bad=bad))

    offset = len(lines_text(2)) + bad.index('"cpu')
    assert position(caught.value) == (
        "Expecting ',' or '}' after an object member",
        3,
        bad.index('"cpu') + 1,
        offset,
    )


@pytest.mark.parametrize(
    "document",
    [
        b'{"a": 1}{"b": 2}\n',  # a second value on the first line
        b'{"a":\n 1}\n{"b": 2}\n',  # the first value over two lines
        b"[1]\n[2]\n",  # the first value is not an object
        b'{"a": 1}\nnot json\n',  # no second value
        b'{"a": 1}\n{"b": \n',  # a second value that is not whole
        b'{"a": 1}\n{"b": 2}\n',  # lines, but no metrics record
    ],
)
def test_documents_that_are_not_json_lines_keep_the_documents_error(document):
    with pytest.raises(DocumentMalformed) as caught:
        run(document)

    assert caught.value.message == "Extra data after the document"


def test_the_broken_sample_keeps_its_exact_error():
    with pytest.raises(DocumentMalformed) as caught:
        run((SAMPLES / "server_1_broken.json").read_bytes())

    assert position(caught.value)[1:] == (77, 20, 1902)


def test_json_lines_without_any_valid_record_fail():
    with pytest.raises(DocumentInvalid) as caught:
        run(b'{"a": 1}\n{"b": 2}\n', name="notes.jsonl")

    assert caught.value.message == "no valid metrics record"


# --- uploads, the task, the download -------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("sent")
@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (gzip.compress(b""), "empty"),
        (gzip.compress(b"  \n "), "only whitespace"),
        (gzip.compress(b"\x89PNG\r\n"), "not JSON"),
        (b"\x1f\x8b\x07" + bytes(7) + b"garbage", "not valid gzip"),
    ],
)
def test_uploads_of_gzip_that_cannot_be_json_are_refused(api, content, detail):
    response = api.post(
        "/api/files/",
        {"file": SimpleUploadedFile("x.json.gz", content)},
        format="multipart",
    )

    assert response.status_code == 400
    assert detail in response.json()["detail"]
    assert not File.objects.exists()


@pytest.mark.django_db
@pytest.mark.usefixtures("sent")
def test_a_gzip_upload_is_processed_and_downloads_as_uploaded(api, user, rules):
    compressed = gzip.compress(server_4_bytes())

    response = api.post(
        "/api/files/",
        {"file": SimpleUploadedFile("server_4.json.gz", compressed)},
        format="multipart",
    )
    assert response.status_code == 201
    file = File.objects.get(pk=response.json()["id"])
    services.file_process(file_id=file.pk, task_id=file.task_id)
    resource = api.get(f"/api/files/{file.pk}/").json()
    download = api.get(f"/api/files/{file.pk}/download/")

    assert resource["status"] == "processed"
    assert resource["kind"] == "server_metrics"
    assert (resource["record_count"], resource["anomaly_count"]) == (9, 27)
    assert resource["size"] == len(compressed)
    assert resource["summary"]["compression"] == "gzip"
    assert b"".join(download.streaming_content) == compressed
    assert download["Content-Type"] == "application/octet-stream"
    assert "Content-Encoding" not in download


@pytest.mark.django_db
def test_json_lines_through_the_task_with_exact_counts_and_pointers(user, rules):
    bad = json.dumps({"server_id": "web-0", "timestamp": "yesterday"})
    file = File.objects.get(
        pk=services.file_create(
            owner=user, upload=upload(lines_text(6, bad=bad), name="m.jsonl")
        ).pk
    )

    result = tasks.process_file.apply(args=[file.pk], task_id=file.task_id)

    assert result.get() == "processed"
    file.refresh_from_db()
    check_outcome(file, "processed", (6, 1, 3))
    assert file.kind == "server_metrics"
    assert list(
        RecordError.objects.filter(file=file).values_list("pointer", "message")
    ) == [("/2/timestamp", "timestamp is not ISO 8601: 'yesterday'")]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content", "name", "status", "expected"),
    [
        (gzip.compress(lines_text(7)), "m.jsonl.gz", "processed", (7, 0, 3)),
        (lines_text(7), "export.json", "processed", (7, 0, 3)),
        (gzip.compress(broken_bytes()), "b.json.gz", "failed", "Expecting ','"),
        (gzip.compress(lines_text(50))[:-20], "t.jsonl.gz", "failed", "truncated"),
        (lines_text(4, bad="{]"), "m.ndjson", "failed", "Expecting a string key"),
    ],
)
def test_gzip_and_json_lines_through_the_task(
    user, rules, content, name, status, expected
):
    file = stored_file(user, content)
    File.objects.filter(pk=file.pk).update(name=name)

    result = tasks.process_file.apply(args=[file.pk], task_id=file.task_id)

    assert result.get() == status
    file.refresh_from_db()
    check_outcome(file, status, expected)


@pytest.mark.django_db
def test_a_gzip_bomb_through_the_task_fails_cleanly(user, rules, settings):
    settings.DWELLFI_MAX_DECOMPRESSED_BYTES = 32 * 1024 * 1024
    file = stored_file(user, spaces_bomb(1024 * 1024 * 1024))

    result = tasks.process_file.apply(args=[file.pk], task_id=file.task_id)

    assert result.get() == "failed"
    file.refresh_from_db()
    check_outcome(file, "failed", "decompresses to more than the limit")
    assert file.error["message"] == (
        "The file decompresses to more than the limit of 33,554,432 bytes"
    )


# --- through the live stack ----------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_gzip_json_lines_through_daphne_and_a_worker(live_stack, rules):
    token = Token.objects.create(user=user_create()).key
    invalid = json.dumps({"server_id": "web-0", "timestamp": "2024-09-19T10:00:00Z"})
    good = gzip.compress(lines_text(5000, bad=invalid[:-1] + ', "cpu_usage": null}'))
    bad = gzip.compress(lines_text(5, bad='{"server_id": "web-0", "cpu_usage": 1,}'))
    headers = {"Authorization": f"Token {token}"}

    with connect(f"{live_stack.ws_url}/notification/events?token={token}") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "snapshot"
        first = upload_live(live_stack, token, good, "export.jsonl.gz")
        second = upload_live(live_stack, token, bad, "broken.jsonl.gz")
        outcomes = {}
        receive_until(
            ws,
            lambda m: (
                m["type"] in ("file.processed", "file.failed")
                and outcomes.setdefault(m["file_id"], m["file"])
                and len(outcomes) == 2
            ),
            timeout=60,
        )

    processed = outcomes[first["id"]]
    assert processed["status"] == "processed"
    assert processed["kind"] == "server_metrics"
    assert (processed["record_count"], processed["invalid_record_count"]) == (5000, 1)
    assert processed["anomaly_count"] == 2500
    failed = outcomes[second["id"]]
    assert failed["status"] == "failed"
    assert (failed["error"]["line"], failed["error"]["column"]) == (3, 39)
    assert failed["error"]["message"] == "Trailing comma before '}'"
    errors = httpx.get(
        f"{live_stack.base_url}/api/files/{first['id']}/errors/", headers=headers
    ).json()
    assert [(e["pointer"], e["message"]) for e in errors["results"]] == [
        ("/2/cpu_usage", "cpu_usage must be a number, got null")
    ]
    download = httpx.get(
        f"{live_stack.base_url}/api/files/{first['id']}/download/", headers=headers
    )
    assert download.content == good
