"""Hostile input through the Celery task, and through a real worker that survives it.

Every case ends `failed` with a clear message, or `processed` where the JSON is
valid, with no partial results left behind. The engine's own tests cover the same
ground byte by byte; these hold the whole path to it: the stored file, the task,
the transaction, the events, and the worker process.
"""

import hashlib
import json
import time
import uuid

import httpx
import pytest
from django.core.files.base import ContentFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token

from conftest import child_pids
from files import tasks
from files.models import Anomaly, File, MetricRecord, RecordError
from notifications.models import Event

from .factories import server_4_bytes, user_create

RECORD = '{"timestamp": "2024-09-19T10:00:00Z", "cpu_usage": 10, "memory_usage": 95}'


def metrics(*records: str) -> bytes:
    return ('{"server_id": "s1", "metrics": [' + ", ".join(records) + "]}").encode()


WRONG_SHAPES = [
    '{"timestamp": "2024-09-19T10:01:00Z", "cpu_usage": "high"}',
    '{"timestamp": "2024-09-19T10:01:00Z", "cpu_usage": true}',
    '{"timestamp": "2024-09-19T10:01:00Z", "cpu_usage": null}',
    '{"timestamp": "2024-09-19T10:01:00Z", "cpu_usage": {"value": 1}}',
    '{"cpu_usage": 1}',
    '{"timestamp": "yesterday", "cpu_usage": 1}',
    '{"timestamp": "2024-13-45T99:00:00Z", "cpu_usage": 1}',
    '{"timestamp": 1726740000, "cpu_usage": 1}',
    '{"timestamp": null, "cpu_usage": 1}',
    "[1, 2]",
    '"record"',
    "42",
    "null",
    "true",
]

# name: (content, status, what the error message says, or the processed counts)
CASES = {
    "truncated": (metrics(RECORD)[:-7], "failed", "Unexpected end of document"),
    "garbage bytes": (b"\x13\x37garbage\x00\xff" * 10, "failed", "Unexpected char"),
    "binary file": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "failed", "UTF-8"),
    "empty": (b"", "failed", "Empty document"),
    "whitespace only": (b"  \n\t \r\n", "failed", "Empty document"),
    "UTF-8 BOM": (b"\xef\xbb\xbf" + metrics(RECORD), "processed", (1, 0, 1)),
    "UTF-16 with BOM": ('{"a": 1}'.encode("utf-16"), "failed", "UTF-16"),
    "UTF-16 without BOM": ('{"a": 1}'.encode("utf-16-le"), "failed", "UTF-16"),
    "invalid UTF-8": (b'{"server_id": "\xff\xfe", "metrics": []}', "failed", "0xff"),
    "lone surrogate": (b'{"a": "\\ud800"}', "failed", "Lone surrogate"),
    "lone low surrogate": (b'["\\udc00x"]', "failed", "Lone surrogate"),
    "NaN": (b'{"a": NaN}', "failed", "Unexpected character 'N'"),
    "Infinity": (b'{"a": Infinity}', "failed", "Unexpected character 'I'"),
    "-Infinity": (b"[-Infinity]", "failed", "Invalid number literal"),
    "thousands of digits": (b"[1" + b"0" * 5000 + b"]", "failed", "Number literal"),
    "thousands of digits in a record": (
        metrics(
            '{"timestamp": "2024-09-19T10:00:00Z", "cpu_usage": 1' + "0" * 5000 + "}"
        ),
        "failed",
        "Number literal longer",
    ),
    "1e400": (b'{"a": 1e400}', "processed", (0, 0, 0)),
    "1e400 in a record": (
        metrics(RECORD, '{"timestamp": "2024-09-19T10:00:00Z", "cpu_usage": 1e400}'),
        "processed",
        (1, 1, 1),
    ),
    "nested 100,000 arrays": (b"[" * 100_000 + b"]" * 100_000, "failed", "Nesting"),
    "nested 100,000 objects": (
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "failed",
        "Nesting deeper",
    ),
    "duplicate keys": (b'{"a": 1, "a": 2}', "processed", (0, 0, 0)),
    "duplicate metrics arrays": (
        metrics(RECORD)[:-1] + b', "metrics": [' + RECORD.encode() + b"]}",
        "processed",
        (2, 0, 2),
    ),
    "NUL in strings and keys": (
        (
            '{"server_id": "s\\u0000x", "\\u0000key": "v\\u0000", "metrics": ['
            + RECORD
            + ', {"timestamp": "2024-09-19T10:01:00Z", "cpu\\u0000usage": 1}]}'
        ).encode(),
        "processed",
        (2, 0, 1),
    ),
    "gigantic string": (b'{"note": "' + b"x" * 20_000_000 + b'"}', "processed", None),
    "trailing garbage": (metrics(RECORD) + b" trailing", "failed", "Extra data"),
    "two documents": (b'{"a": 1}{"b": 2}', "failed", "Extra data after"),
    "records of every wrong shape": (
        metrics(RECORD, *WRONG_SHAPES),
        "processed",
        (1, len(WRONG_SHAPES), 1),
    ),
    "no valid record": (metrics('{"cpu_usage": 1}', "[1]"), "failed", "no valid"),
    "metrics not an array": (b'{"metrics": {"a": 1}}', "failed", "must be an array"),
}


def stored_file(owner, content: bytes) -> File:
    """A queued file holding `content` as is, past the upload's own checks."""
    file = File(
        owner=owner,
        updated_by=owner,
        name="hostile.json",
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        task_id=str(uuid.uuid4()),
    )
    file.content.save("hostile.json", ContentFile(content), save=False)
    file.save()
    return file


def results_of(file: File) -> tuple[int, int, int]:
    """(records, record errors, anomalies) stored for the file."""
    return (
        MetricRecord.objects.filter(file=file).count(),
        RecordError.objects.filter(file=file).count(),
        Anomaly.objects.filter(file=file).count(),
    )


def check_outcome(file: File, status: str, expected) -> None:
    assert file.status == status, (file.status, file.error)
    if status == "failed":
        assert expected in file.error["message"]
        assert results_of(file) == (0, 0, 0)
        assert (file.record_count, file.anomaly_count) == (0, 0)
    else:
        assert file.error is None
        if expected is not None:
            assert results_of(file) == expected
        assert results_of(file) == (
            file.record_count,
            file.invalid_record_count,
            file.anomaly_count,
        )


@pytest.mark.django_db
@pytest.mark.parametrize("name", CASES)
def test_hostile_input_through_the_task(name, user, rules):
    content, status, expected = CASES[name]
    file = stored_file(user, content)

    result = tasks.process_file.apply(args=[file.pk], task_id=file.task_id)

    assert result.get() == status
    file.refresh_from_db()
    check_outcome(file, status, expected)
    outcome = "file.failed" if status == "failed" else "file.processed"
    assert Event.objects.filter(file_id=file.pk, type=outcome).exists()


documents = st.one_of(
    st.binary(max_size=400),
    st.sampled_from([case[0] for case in CASES.values() if len(case[0]) < 10_000]),
    st.builds(
        lambda seed, cut, junk: seed[:cut] + junk + seed[cut:],
        st.sampled_from([metrics(RECORD, *WRONG_SHAPES), server_4_bytes()]),
        st.integers(min_value=0, max_value=1200),
        st.binary(max_size=4),
    ),
)


@pytest.mark.django_db
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=documents)
def test_property_whatever_bytes_arrive_the_task_ends_processed_or_failed(
    content, user, rules
):
    file = stored_file(user, content)

    result = tasks.process_file.apply(args=[file.pk], task_id=file.task_id)

    assert result.successful(), result.traceback
    file.refresh_from_db()
    assert result.get() == file.status
    assert file.status in ("processed", "failed")
    if file.status == "failed":
        assert file.error["message"]
        assert not file.error["message"].startswith("Internal error"), file.error
        assert results_of(file) == (0, 0, 0)
    else:
        assert results_of(file) == (
            file.record_count,
            file.invalid_record_count,
            file.anomaly_count,
        )


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_survives_every_hostile_file(live_stack, rules):
    token = Token.objects.create(user=user_create()).key
    headers = {"Authorization": f"Token {token}"}
    pool = child_pids(live_stack.worker.popen.pid)
    assert pool, "the worker has no pool processes"

    expected, refused = {}, []
    with httpx.Client(base_url=live_stack.base_url, headers=headers) as http:
        for name, (content, status, outcome) in CASES.items():
            response = http.post(
                "/api/files/", files={"file": ("hostile.json", content)}, timeout=60
            )
            if response.status_code == 400:
                # The upload's cheap checks turn away what cannot be JSON at all.
                assert response.headers["content-type"] == "application/json"
                refused.append(name)
                continue
            assert response.status_code == 201, (name, response.text)
            expected[response.json()["id"]] = (name, status, outcome)

        final = {}
        deadline = time.monotonic() + 180
        while len(final) < len(expected) and time.monotonic() < deadline:
            for file_id in expected.keys() - final.keys():
                body = http.get(f"/api/files/{file_id}/").json()
                if body["status"] in ("processed", "failed"):
                    final[file_id] = body
            time.sleep(0.2)

        assert final.keys() == expected.keys(), "some files never finished"
        for file_id, (name, status, outcome) in expected.items():
            body = final[file_id]
            assert body["status"] == status, (name, body["error"])
            if status == "failed":
                assert outcome in body["error"]["message"], name

        # The same worker and pool processes, still serving.
        assert live_stack.worker.popen.poll() is None
        assert child_pids(live_stack.worker.popen.pid) == pool
        after = http.post(
            "/api/files/", files={"file": ("after.json", server_4_bytes())}
        ).json()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = http.get(f"/api/files/{after['id']}/").json()
            if body["status"] == "processed":
                break
            time.sleep(0.1)
        assert body["status"] == "processed"
    assert set(refused) <= {
        "empty",
        "whitespace only",
        "garbage bytes",
        "binary file",
        "UTF-16 with BOM",
        "UTF-16 without BOM",
    }, refused
    assert json.dumps(final)  # every error is JSON-ready as delivered
