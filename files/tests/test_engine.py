"""Tests of the processing engine and its strict tokenizer: pure Python, no Django."""

import contextlib
import io
import json
import math
import random
import time
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import ijson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from files import engine, jsonread, jsonstrict
from files.engine import (
    DEFAULT_RULES,
    METRICS,
    Anomaly,
    DocumentInvalid,
    DocumentMalformed,
    Outcome,
    ProcessingError,
    Record,
    RecordIssue,
    Rule,
)
from files.tests.factories import SAMPLES

# --- helpers ---------------------------------------------------------------------


class MemorySink:
    """Keeps every batch, as the sink protocol describes."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.anomalies: list[Anomaly] = []
        self.issues: list[RecordIssue] = []
        self.batch_sizes: list[int] = []
        self.resets = 0

    def add_records(self, batch: list[Record]) -> None:
        self.batch_sizes.append(len(batch))
        self.records.extend(batch)

    def add_anomalies(self, batch: list[Anomaly]) -> None:
        self.batch_sizes.append(len(batch))
        self.anomalies.extend(batch)

    def add_issues(self, batch: list[RecordIssue]) -> None:
        self.batch_sizes.append(len(batch))
        self.issues.extend(batch)

    def reset(self) -> None:
        self.resets += 1
        self.records, self.anomalies, self.issues = [], [], []


class TrickleIO(io.BytesIO):
    """A stream that returns at most `step` bytes per read, like a slow socket."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self.step = step

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.step
        return super().read(min(size, self.step))


def run(doc: bytes, rules=DEFAULT_RULES, step: int | None = None):
    """Process `doc`; return the outcome and the sink."""
    sink = MemorySink()

    def open_stream() -> io.BytesIO:
        return io.BytesIO(doc) if step is None else TrickleIO(doc, step)

    outcome = engine.process(open_stream, size=len(doc), rules=rules, sink=sink)
    return outcome, sink


def malformed(doc: bytes) -> DocumentMalformed:
    with pytest.raises(DocumentMalformed) as caught:
        run(doc)
    return caught.value


def invalid(doc: bytes) -> DocumentInvalid:
    with pytest.raises(DocumentInvalid) as caught:
        run(doc)
    return caught.value


def position(error: ProcessingError) -> tuple[str, int | None, int | None, int | None]:
    return error.message, error.line, error.column, error.offset


def strict_events(doc: bytes, step: int | None = None) -> list:
    stream = io.BytesIO(doc) if step is None else TrickleIO(doc, step)
    return list(jsonstrict.basic_parse(stream))


def fast_events(doc: bytes, step: int | None = None) -> list | None:
    """Events as the engine's fast pass gets them, or None where it bails out.

    Uses the fast path directly on purpose: it is the prefilter under test.
    """
    stream = io.BytesIO(doc) if step is None else TrickleIO(doc, step)
    events, _ = jsonread.read_fast(stream, jsonread.Progress(len(doc), None))
    try:
        return list(events)
    except Exception:
        return None


def record(ts: object = "2024-09-19T10:00:00Z", **values) -> dict:
    base = {"timestamp": ts} | {name: 10 for name in METRICS}
    return base | values


def server_doc(records: list, **fields) -> bytes:
    return json.dumps({"server_id": "s1", **fields, "metrics": records}).encode()


def yajl_doc(records: list, **fields) -> bytes:
    """A server document whose `metrics` member starts past the first chunk.

    `jsonread.read` gives it to the yajl fast pass rather than the records path:
    for the tests of that pass and of the strict pass after it.
    """
    return server_doc(records, padding="p" * jsonstrict.CHUNK_SIZE, **fields)


def sample_like(count: int = 9) -> bytes:
    """A document laid out like the real samples: one server, indented records."""
    records = [
        record(f"2024-09-19T10:{i:02d}:00Z", cpu_usage=100 + i, memory_usage=50)
        for i in range(count)
    ]
    doc = {
        "server_id": "server_002",
        "server_name": "web-server-03",
        "location": "data-center-4",
        "metrics": records,
    }
    return json.dumps(doc, indent=4).encode()


# --- the samples -----------------------------------------------------------------


def test_sample_server_4() -> None:
    path = SAMPLES / "server_4.json"
    outcome, sink = run(path.read_bytes())
    assert outcome.kind == "server_metrics"
    assert outcome.record_count == 9
    assert outcome.anomaly_count == 27
    assert outcome.invalid_record_count == 0
    assert len(sink.records) == 9
    assert len(sink.anomalies) == 27
    assert sink.resets == 0


def test_sample_broken() -> None:
    path = SAMPLES / "server_1_broken.json"
    error = malformed(path.read_bytes())
    assert position(error) == (
        "Expecting ',' or ']' after an array element",
        77,
        20,
        1902,
    )
    assert error.pointer is None


def test_missing_brace_like_the_broken_sample() -> None:
    doc = sample_like()
    # Drop the "{" of the eighth record, as in the broken sample.
    starts = [
        i for i in range(len(doc)) if doc.startswith(b'{\n            "timestamp"', i)
    ]
    cut = starts[7]
    broken = doc[:cut] + doc[cut + 1 :]
    offset = broken.index(b'"timestamp"', cut) + len(b'"timestamp"')
    line = broken.count(b"\n", 0, offset) + 1
    column = offset - broken.rindex(b"\n", 0, offset)
    error = malformed(broken)
    assert position(error) == (
        "Expecting ',' or ']' after an array element",
        line,
        column,
        offset,
    )
    assert broken[offset : offset + 1] == b":"
    assert (line, column) == (77, 24)


def test_sample_like_document() -> None:
    outcome, sink = run(sample_like())
    assert outcome.kind == "server_metrics"
    assert outcome.record_count == 9
    # cpu_usage 100..108 is above 85 in every record; the rest is in range.
    assert outcome.anomaly_count == 9
    assert [r.index for r in sink.records] == list(range(9))
    first = sink.records[0]
    assert first.server == "server_002"
    assert first.timestamp == datetime(2024, 9, 19, 10, 0, tzinfo=UTC)
    assert first.values == (100, 50, 10, 10, 10, 10, 10)
    anomaly = sink.anomalies[0]
    assert anomaly == Anomaly(0, first.timestamp, "server_002", "cpu_usage", 100, 0, 85)
    summary = outcome.summary
    assert summary["servers"] == [
        {
            "id": "server_002",
            "name": "web-server-03",
            "location": "data-center-4",
            "record_count": 9,
        }
    ]
    assert summary["record_count"] == 9
    assert summary["invalid_record_count"] == 0
    assert summary["anomaly_count"] == 9
    assert summary["first_timestamp"] == "2024-09-19T10:00:00Z"
    assert summary["last_timestamp"] == "2024-09-19T10:08:00Z"
    assert summary["metrics"]["cpu_usage"] == {
        "min": 100,
        "max": 108,
        "mean": 104.0,
        "count": 9,
    }
    assert set(summary["metrics"]) == set(METRICS)
    assert summary["anomalies_by_metric"] == {"cpu_usage": 9}
    assert summary["size"] == len(sample_like())
    assert summary["depth"] == 3
    json.dumps(summary)  # storable as JSON


# --- server arrays ---------------------------------------------------------------


def test_array_of_servers() -> None:
    doc = json.dumps(
        [
            {"server_id": "a", "location": "x", "metrics": [record(), record()]},
            {"server_name": "named", "metrics": [record(cpu_usage="hot")]},
            "not a server",
            {"server_id": "no-metrics"},
            {"server_id": "bad-metrics", "metrics": {"a": 1}},
            {"server_id": 7, "metrics": [record(cpu_usage=99), [1]]},
            {"metrics": [], "server_id": "empty"},
        ]
    ).encode()
    outcome, sink = run(doc)
    assert outcome.kind == "server_metrics"
    assert outcome.record_count == 3
    assert [(r.index, r.server) for r in sink.records] == [
        (0, "a"),
        (1, "a"),
        (3, "#5"),
    ]
    assert sink.issues == [
        RecordIssue("/1/metrics/0/cpu_usage", "cpu_usage must be a number, got string"),
        RecordIssue("/2", "server must be an object, got string"),
        RecordIssue("/3", "metrics is required"),
        RecordIssue("/4", "metrics must be an array, got object"),
        RecordIssue("/5/metrics/1", "record must be an object, got array"),
    ]
    assert outcome.invalid_record_count == len(sink.issues) == 5
    assert [a.record_index for a in sink.anomalies] == [3]
    servers = outcome.summary["servers"]
    assert [s["id"] for s in servers] == ["a", None, None, "empty"]
    assert [s["name"] for s in servers] == [None, "named", None, None]
    assert [s["record_count"] for s in servers] == [2, 0, 1, 0]
    assert outcome.summary["server_count"] == 4
    assert outcome.summary["depth"] == 4


def test_array_whose_first_element_is_not_a_server_is_json() -> None:
    doc = json.dumps([{"a": 1}, {"metrics": [record()]}]).encode()
    outcome, sink = run(doc)
    assert outcome.kind == "json"
    assert outcome.summary == {
        "top_level_type": "array",
        "item_count": 2,
        "depth": 4,
        "size": len(doc),
    }
    assert sink.records == []


def test_array_first_server_with_bad_metrics_is_still_servers() -> None:
    doc = json.dumps([{"metrics": 5}, {"metrics": [record()]}]).encode()
    outcome, sink = run(doc)
    assert outcome.kind == "server_metrics"
    assert sink.issues == [RecordIssue("/0", "metrics must be an array, got number")]
    assert sink.records[0].server == "#1"


def test_array_of_servers_without_valid_record() -> None:
    doc = json.dumps([{"metrics": [{"cpu_usage": 1}]}, {"metrics": []}]).encode()
    error = invalid(doc)
    assert error.as_dict() == {
        "message": "no valid metrics record",
        "line": None,
        "column": None,
        "offset": None,
        "pointer": "",
    }


# --- kind json -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "summary"),
    [
        (
            b'{"a": 1, "b": [1, {"c": null}]}',
            {"top_level_type": "object", "key_count": 2, "depth": 3},
        ),
        (b'{"a": 1, "a": 2}', {"top_level_type": "object", "key_count": 2, "depth": 1}),
        (b"{}", {"top_level_type": "object", "key_count": 0, "depth": 1}),
        (b"[]", {"top_level_type": "array", "item_count": 0, "depth": 1}),
        (
            b"[1, [2, [3]], {}]",
            {"top_level_type": "array", "item_count": 3, "depth": 3},
        ),
        (b'"text"', {"top_level_type": "string", "depth": 0}),
        (b" -1.5e3 ", {"top_level_type": "number", "depth": 0}),
        (b"true", {"top_level_type": "boolean", "depth": 0}),
        (b"null", {"top_level_type": "null", "depth": 0}),
        (
            b'{"server_id": "x", "values": []}',
            {"top_level_type": "object", "key_count": 2, "depth": 2},
        ),
    ],
)
def test_json_summaries(doc: bytes, summary: dict) -> None:
    outcome, sink = run(doc)
    assert outcome == Outcome("json", summary | {"size": len(doc)}, 0, 0, 0)
    assert sink.records == sink.issues == sink.anomalies == []


def test_json_depth_at_the_limit() -> None:
    doc = b"[" * 512 + b"]" * 512
    outcome, _ = run(doc)
    assert outcome.summary["depth"] == 512


# --- malformed documents ---------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (b"", ("Empty document", 1, 1, 0)),
        (b"  \n  ", ("Empty document", 2, 3, 5)),
        (b"\xef\xbb\xbf", ("Empty document", 1, 1, 3)),
        (b'{"a": 1,}', ("Trailing comma before '}'", 1, 9, 8)),
        (b"[1, 2,]", ("Trailing comma before ']'", 1, 7, 6)),
        (b"[1 2]", ("Expecting ',' or ']' after an array element", 1, 4, 3)),
        (b'{"a": 1 "b": 2}', ("Expecting ',' or '}' after an object member", 1, 9, 8)),
        (b'{"a" 1}', ("Expecting ':' after an object key", 1, 6, 5)),
        (b"{1: 2}", ("Expecting a string key or '}'", 1, 2, 1)),
        (b'{"a": 1, 2: 3}', ("Expecting a string key", 1, 10, 9)),
        (b'{"a": }', ("Unexpected character '}'", 1, 7, 6)),
        (b'{"a": 1}x', ("Extra data after the document", 1, 9, 8)),
        (b'{"a": 1}\n{"b": 2}', ("Extra data after the document", 2, 1, 9)),
        (b"[1, 2", ("Unexpected end of document", 1, 6, 5)),
        (b'{"a": [1, {"b": ', ("Unexpected end of document", 1, 17, 16)),
        (b'{"a": "abc', ("Unterminated string", 1, 7, 6)),
        (b"tru", ("Unexpected end of document", 1, 4, 3)),
        (b"[trve]", ("Invalid literal (expected 'true')", 1, 4, 3)),
        (b"NaN", ("Unexpected character 'N'", 1, 1, 0)),
        (b"[1, Infinity]", ("Unexpected character 'I'", 1, 5, 4)),
        (b"[-Infinity]", ("Invalid number literal '-'", 1, 2, 1)),
        (b"[01]", ("Invalid number literal '01'", 1, 3, 2)),
        (b"[1.]", ("Invalid number literal '1.'", 1, 3, 2)),
        (b"[1e]", ("Invalid number literal '1e'", 1, 3, 2)),
        (b"[.5]", ("Unexpected character '.'", 1, 2, 1)),
        (b"[+1]", ("Unexpected character '+'", 1, 2, 1)),
        (
            b"[1" + b"0" * 100 + b"]",
            ("Number literal longer than 100 characters", 1, 2, 1),
        ),
        (b'"a\tb"', ("Unescaped control character U+0009 in string", 1, 3, 2)),
        (b'"a\nb"', ("Unescaped control character U+000A in string", 1, 3, 2)),
        (b'"\\x"', ("Invalid escape sequence '\\x' in string", 1, 2, 1)),
        (
            b'"\\u12G4"',
            ("Invalid \\u escape in string (expected 4 hex digits)", 1, 2, 1),
        ),
        (b'["\xff"]', ("Invalid UTF-8 byte 0xff", 1, 3, 2)),
        (b'{"k": "\xc3"}', ("Invalid UTF-8 byte 0xc3", 1, 8, 7)),
        (b'"\xed\xa0\x80"', ("Invalid UTF-8 byte 0xed", 1, 2, 1)),
        (b"[1]\xff", ("Invalid UTF-8 byte 0xff", 1, 4, 3)),
        (b"[\xc3\xa9]", ("Unexpected character '\xe9'", 1, 2, 1)),
        (b'"\\ud800"', ("Lone surrogate \\ud800 in string", 1, 2, 1)),
        (b'"\\udc00"', ("Lone surrogate \\udc00 in string", 1, 2, 1)),
        (b'"ab\\uD800\\u0041"', ("Lone surrogate \\uD800 in string", 1, 4, 3)),
        (b'"\\ud83d\\ude00\\ud800x"', ("Lone surrogate \\ud800 in string", 1, 14, 13)),
        (b'"\\\\\\ud800"', ("Lone surrogate \\ud800 in string", 1, 4, 3)),
        (b"\x0c[1]", ("Unexpected character '\\x0c'", 1, 1, 0)),
        (b"[1,\x0b2]", ("Unexpected character '\\x0b'", 1, 4, 3)),
        (b'{"a": 1 /* c */}', ("Expecting ',' or '}' after an object member", 1, 9, 8)),
        (b"[1]\x00", ("Extra data after the document", 1, 4, 3)),
        (b"\xef\xbb\xbf[1,]", ("Trailing comma before ']'", 1, 4, 6)),
        (
            '{"café": 1,\n "€€": [1, 2 3]}'.encode(),
            ("Expecting ',' or ']' after an array element", 2, 14, 30),
        ),
    ],
)
def test_malformed(doc: bytes, expected: tuple) -> None:
    error = malformed(doc)
    assert position(error) == expected
    assert error.as_dict() == {
        "message": expected[0],
        "line": expected[1],
        "column": expected[2],
        "offset": expected[3],
        "pointer": None,
    }


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_are_malformed(encoding: str) -> None:
    doc = json.dumps({"metrics": [record()]}).encode(encoding)
    error = malformed(doc)
    assert position(error) == (
        "Document is UTF-16 or UTF-32 encoded; JSON must be UTF-8",
        1,
        1,
        0,
    )


def test_columns_count_characters_on_long_lines() -> None:
    # One line far longer than a chunk, with multi-byte characters before the
    # error, so the column is counted across discarded buffer contents.
    items = ",".join(['"é€😀"'] * 40000)
    doc = f"[\n  {items} 1]".encode()
    error = malformed(doc)
    offset = doc.index(b" 1]") + 1
    assert position(error) == (
        "Expecting ',' or ']' after an array element",
        2,
        len(items) + 4,
        offset,
    )
    assert position(error) == position(malformed_stream(doc, step=1000))


def malformed_stream(doc: bytes, step: int) -> DocumentMalformed:
    with pytest.raises(DocumentMalformed) as caught:
        run(doc, step=step)
    return caught.value


def test_deep_nesting_fails_fast() -> None:
    for doc in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000):
        started = time.monotonic()
        error = malformed(doc)
        assert time.monotonic() - started < 2
        assert error.message == "Nesting deeper than 512 levels"
        assert error.line == 1


def test_deep_nesting_position() -> None:
    assert position(malformed(b"[" * 513)) == (
        "Nesting deeper than 512 levels",
        1,
        513,
        512,
    )
    doc = server_doc([record(extra=json.loads("[" * 600 + "]" * 600))])
    assert malformed(doc).message == "Nesting deeper than 512 levels"


def test_long_numbers() -> None:
    digits = b"7" * 5000
    assert malformed(b"[" + digits + b"]").message == (
        "Number literal longer than 100 characters"
    )
    # yajl would read this one as 0.0 without complaint.
    tiny = b"0." + b"0" * 5000 + b"1"
    error = malformed(server_doc([]).replace(b"[]", b"[" + tiny + b"]"))
    assert error.message == "Number literal longer than 100 characters"
    longest = b"1." + b"5" * 98
    outcome, _ = run(b"[" + longest + b"]")
    assert outcome.kind == "json"


def test_truncated_documents() -> None:
    doc = sample_like(3)
    for end in range(0, len(doc) - 1, 7):
        error = malformed(doc[:end])
        assert error.offset is not None
        assert error.offset <= end


def test_trailing_garbage_after_server_document() -> None:
    doc = sample_like(2) + b"\n]"
    error = malformed(doc)
    assert error.message == "Extra data after the document"
    assert error.offset == len(doc) - 1


# --- accepted oddities -----------------------------------------------------------


def test_bom_is_skipped() -> None:
    doc = b"\xef\xbb\xbf" + sample_like(2)
    outcome, sink = run(doc)
    assert outcome.record_count == 2
    assert outcome.summary["size"] == len(doc)
    assert sink.resets == 0


def test_surrogate_pair_and_nul_are_accepted() -> None:
    doc = (
        b'{"server_id": "a\\u0000b\\ud83d\\ude00", "location": "\\u0000",'
        b' "metrics": [{"timestamp": "2024-01-01T00:00:00", "note": "\\u0000"}]}'
    )
    outcome, sink = run(doc)
    assert sink.records[0].server == "ab\U0001f600"
    assert outcome.summary["servers"][0]["id"] == "ab\U0001f600"
    assert outcome.summary["servers"][0]["location"] == ""
    assert sink.resets == 0


def test_summary_strings_are_truncated() -> None:
    doc = server_doc([record()], server_name="n" * 1000).replace(
        b'"s1"', b'"' + b"x" * 300 + b'"'
    )
    outcome, sink = run(doc)
    assert sink.records[0].server == "x" * 255
    assert outcome.summary["servers"][0]["name"] == "n" * 255


def test_big_integer_falls_back_to_strict() -> None:
    outcome, sink = run(b"[99999999999999999999]")
    assert outcome.summary == {
        "top_level_type": "array",
        "item_count": 1,
        "depth": 1,
        "size": 22,
    }
    assert sink.resets == 1
    outcome, sink = run(server_doc([record(disk_read=99999999999999999999)]))
    assert sink.records[0].values[2] == 99999999999999999999
    assert [a.metric for a in sink.anomalies] == ["disk_read"]


def test_overflowing_number_is_an_invalid_record() -> None:
    doc = server_doc([record(), record()]).replace(
        b'"cpu_usage": 10', b'"cpu_usage": 1e400', 1
    )
    outcome, sink = run(doc)
    assert outcome.record_count == 1
    assert sink.issues == [
        RecordIssue("/metrics/0/cpu_usage", "cpu_usage must be a finite number")
    ]
    assert [r.index for r in sink.records] == [1]
    outcome, _ = run(b'{"x": -1e400}')
    assert outcome.kind == "json"


def test_duplicate_keys_last_wins() -> None:
    doc = (
        b'{"server_id": "first", "server_id": "second", "metrics": ['
        b'{"timestamp": "bad", "timestamp": "2024-01-01T00:00:00Z",'
        b' "cpu_usage": "x", "cpu_usage": 5},'
        b'{"timestamp": "2024-01-01T00:00:00Z", "cpu_usage": 5, "cpu_usage": "x"}]}'
    )
    outcome, sink = run(doc)
    assert outcome.record_count == 1
    assert sink.records[0].server == "second"
    assert sink.records[0].values[0] == 5
    assert sink.issues == [
        RecordIssue("/metrics/1/cpu_usage", "cpu_usage must be a number, got string")
    ]


def test_every_metrics_array_of_a_server_is_processed() -> None:
    doc = (
        b'{"metrics": [{"timestamp": "2024-01-01"}], "metrics": 3,'
        b' "metrics": [{"timestamp": "2024-01-02"}]}'
    )
    outcome, sink = run(doc)
    assert outcome.record_count == 2
    assert [r.index for r in sink.records] == [0, 1]


@pytest.mark.parametrize(
    ("text", "resets"),
    [
        ('é\\"x' * 200_000, 0),
        # Over 2 MiB without a quote: yajl would take quadratic time on it, so
        # the strict tokenizer reads it instead.
        ("é" * 3_000_000, 1),
        ('é"' * 1_000_000, 1),
    ],
)
def test_huge_string(text: str, resets: int) -> None:
    doc = yajl_doc([record(note=text), record()], server_name="big")
    outcome, sink = run(doc)
    assert outcome.record_count == 2
    assert sink.resets == resets
    # The records path reads it once, with the tokenizer where msgspec may not.
    outcome, sink = run(server_doc([record(note=text), record()], server_name="big"))
    assert outcome.record_count == 2
    assert sink.resets == 0
    # The string across many reads of the strict tokenizer.
    assert ("string", text) in strict_events(doc, step=50_000)


# --- records ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "pointer", "message"),
    [
        ({"cpu_usage": 1}, "/metrics/1/timestamp", "timestamp is required"),
        (
            record(ts=5),
            "/metrics/1/timestamp",
            "timestamp must be a string, got number",
        ),
        (
            record(ts=None),
            "/metrics/1/timestamp",
            "timestamp must be a string, got null",
        ),
        (
            record(ts=["x"]),
            "/metrics/1/timestamp",
            "timestamp must be a string, got array",
        ),
        (
            record(ts="yesterday"),
            "/metrics/1/timestamp",
            "timestamp is not ISO 8601: 'yesterday'",
        ),
        (
            record(ts="x" * 100),
            "/metrics/1/timestamp",
            f"timestamp is not ISO 8601: '{'x' * 60}...'",
        ),
        (
            record(ts="0001-01-01T00:00:00+01:00"),
            "/metrics/1/timestamp",
            "timestamp is out of range: '0001-01-01T00:00:00+01:00'",
        ),
        (
            record(cpu_usage="12"),
            "/metrics/1/cpu_usage",
            "cpu_usage must be a number, got string",
        ),
        (
            record(memory_usage=True),
            "/metrics/1/memory_usage",
            "memory_usage must be a number, got boolean",
        ),
        (
            record(disk_read=None),
            "/metrics/1/disk_read",
            "disk_read must be a number, got null",
        ),
        (
            record(disk_write={"v": 1}),
            "/metrics/1/disk_write",
            "disk_write must be a number, got object",
        ),
        (
            record(network_in=[1]),
            "/metrics/1/network_in",
            "network_in must be a number, got array",
        ),
        (
            record(ts="bad", response_time="x"),
            "/metrics/1/timestamp",
            "timestamp is not ISO 8601: 'bad'",
        ),
        (
            record(network_out="x", cpu_usage="y"),
            "/metrics/1/cpu_usage",
            "cpu_usage must be a number, got string",
        ),
        ([1, 2], "/metrics/1", "record must be an object, got array"),
        ("text", "/metrics/1", "record must be an object, got string"),
        (None, "/metrics/1", "record must be an object, got null"),
        (3, "/metrics/1", "record must be an object, got number"),
        (False, "/metrics/1", "record must be an object, got boolean"),
    ],
)
def test_invalid_records(item, pointer: str, message: str) -> None:
    doc = server_doc([record(), item, record()])
    outcome, sink = run(doc)
    assert sink.issues == [RecordIssue(pointer, message)]
    assert outcome.invalid_record_count == 1
    assert outcome.record_count == 2
    assert [r.index for r in sink.records] == [0, 2]


def test_valid_record_shapes() -> None:
    records = [
        {"timestamp": "2024-09-19T10:00:00Z"},
        {
            "timestamp": "2024-09-19T12:00:00+02:00",
            "cpu_usage": 1.5,
            "extra": {"a": [1, {"b": None}]},
        },
        {"timestamp": "2024-09-19 10:00:00", "tags": ["x"], "memory_usage": -0.0},
        {"timestamp": "2024-09-19", "cpu_usage": 0, "response_time": 200},
    ]
    outcome, sink = run(server_doc(records))
    assert outcome.record_count == 4
    assert outcome.anomaly_count == 0
    assert [r.timestamp for r in sink.records] == [
        datetime(2024, 9, 19, 10, tzinfo=UTC),
        datetime(2024, 9, 19, 10, tzinfo=UTC),
        datetime(2024, 9, 19, 10, tzinfo=UTC),
        datetime(2024, 9, 19, tzinfo=UTC),
    ]
    assert all(r.timestamp.tzinfo is UTC for r in sink.records)
    assert sink.records[0].values == (None,) * 7
    assert sink.records[1].values[0] == 1.5
    assert outcome.summary["metrics"]["cpu_usage"] == {
        "min": 0,
        "max": 1.5,
        "mean": 0.75,
        "count": 2,
    }
    assert outcome.summary["depth"] == 6


def test_rule_bounds_are_inclusive() -> None:
    rules = [Rule("cpu_usage", 10, 20), Rule("unknown", 0, 1)]
    records = [record(cpu_usage=v) for v in (9, 10, 20, 20.5)]
    outcome, sink = run(server_doc(records), rules=rules)
    assert [(a.record_index, a.value, a.low, a.high) for a in sink.anomalies] == [
        (0, 9, 10, 20),
        (3, 20.5, 10, 20),
    ]
    assert outcome.summary["anomalies_by_metric"] == {"cpu_usage": 2}


def test_metrics_must_be_an_array() -> None:
    error = invalid(b'{"server_id": "x", "metrics": {"cpu_usage": 1}}')
    assert error.as_dict() == {
        "message": "metrics must be an array",
        "line": None,
        "column": None,
        "offset": None,
        "pointer": "/metrics",
    }


@pytest.mark.parametrize(
    "doc",
    [
        b'{"metrics": []}',
        b'{"metrics": [1, {"cpu_usage": 2}]}',
        b'{"metrics": [{"timestamp": "2024-01-01", "cpu_usage": "x"}]}',
    ],
)
def test_no_valid_record(doc: bytes) -> None:
    error = invalid(doc)
    assert (error.message, error.pointer) == ("no valid metrics record", "/metrics")


def test_malformed_wins_over_invalid() -> None:
    assert malformed(b'{"metrics": 1} x').message == "Extra data after the document"


# --- batching, fallback, progress, errors from the caller ------------------------


def test_batches_and_global_indexes() -> None:
    count = engine.BATCH_SIZE * 2 + 7
    records = [record(cpu_usage=100) for _ in range(count)]
    records[engine.BATCH_SIZE] = {"cpu_usage": 1}
    doc = server_doc(records)
    outcome, sink = run(doc)
    assert outcome.record_count == count - 1
    assert len(sink.records) == count - 1
    assert len(sink.anomalies) == outcome.anomaly_count == count - 1
    assert max(sink.batch_sizes) == engine.BATCH_SIZE
    assert [r.index for r in sink.records] == [
        i for i in range(count) if i != engine.BATCH_SIZE
    ]
    assert sink.issues == [
        RecordIssue(f"/metrics/{engine.BATCH_SIZE}/timestamp", "timestamp is required")
    ]


def test_many_anomalies_are_split_into_batches() -> None:
    records = [record(**{name: -1 for name in METRICS}) for _ in range(1000)]
    _, sink = run(server_doc(records))
    assert len(sink.anomalies) == 7000
    assert max(sink.batch_sizes) == engine.BATCH_SIZE


def test_sink_reset_on_fallback_leaves_no_duplicates() -> None:
    count = engine.BATCH_SIZE + 100
    records = [record() for _ in range(count)]
    # Integers beyond 64 bits are valid JSON that only the strict pass reads.
    records[-1]["big"] = 10**30
    outcome, sink = run(yajl_doc(records))
    assert sink.resets == 1
    assert outcome.record_count == count
    assert [r.index for r in sink.records] == list(range(count))


def progress_reports(doc: bytes) -> tuple[list[float], bool]:
    """The fractions reported while processing `doc`, and whether it succeeded."""
    reports: list[float] = []
    try:
        engine.process(
            lambda: TrickleIO(doc, 4096),
            size=len(doc),
            rules=DEFAULT_RULES,
            sink=MemorySink(),
            on_progress=reports.append,
        )
    except DocumentMalformed:
        return reports, False
    return reports, True


def test_progress_reaches_one() -> None:
    reports, succeeded = progress_reports(sample_like(500))
    assert succeeded
    assert len(reports) > 10
    assert reports == sorted(reports)
    assert reports[-1] == 1.0


def test_progress_restarts_for_the_strict_pass() -> None:
    # Found at the end, so the fast pass has read everything before it bails out.
    big_int_at_end = yajl_doc([record()] * 2000 + [record(big=10**30)])
    for doc, succeeds in ((big_int_at_end, True), (sample_like(500) + b"x", False)):
        reports, succeeded = progress_reports(doc)
        assert succeeded is succeeds
        assert all(0.0 <= r <= 1.0 for r in reports)
        # Two passes, each rising on its own.
        restart = next(i for i in range(1, len(reports)) if reports[i] < reports[i - 1])
        assert reports[:restart] == sorted(reports[:restart])
        assert reports[restart:] == sorted(reports[restart:])
        assert reports[restart] < 0.1
        assert reports[restart - 1] == 1.0


def test_exceptions_from_the_caller_propagate() -> None:
    class FailingSink(MemorySink):
        def add_records(self, batch: list[Record]) -> None:
            raise RuntimeError("database down")

    with pytest.raises(RuntimeError, match="database down"):
        engine.process(
            lambda: io.BytesIO(sample_like()),
            size=1,
            rules=DEFAULT_RULES,
            sink=FailingSink(),
        )

    class FailingStream(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        engine.process(
            lambda: FailingStream(b"[]"), size=2, rules=DEFAULT_RULES, sink=MemorySink()
        )

    def failing_progress(fraction: float) -> None:
        raise KeyError("socket closed")

    sink = MemorySink()
    with pytest.raises(KeyError):
        engine.process(
            lambda: io.BytesIO(b"[1]"),
            size=3,
            rules=DEFAULT_RULES,
            sink=sink,
            on_progress=failing_progress,
        )
    assert sink.resets == 0


@pytest.mark.parametrize(
    ("first_key", "count", "pad"),
    [
        ("", 20_000, 2_000),
        # An integer beyond 64 bits sends the whole file to the strict pass.
        ('"big": 100000000000000000000000, ', 1_500, 30_000),
    ],
)
def test_memory_is_bounded_by_a_batch(first_key: str, count: int, pad: int) -> None:
    class Generated(io.RawIOBase):
        """Padded metrics, produced as read, never held whole."""

        def __init__(self, count: int) -> None:
            self.parts = iter(self._parts(count))
            self.pending = b""

        @staticmethod
        def _parts(count: int):
            yield b"{" + first_key.encode() + b'"server_id": "gen", "metrics": ['
            line = json.dumps(record(cpu_usage=1, pad="p" * pad)).encode()
            for i in range(count):
                yield (b"," if i else b"") + line
            yield b"]}"

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            while len(self.pending) < size:
                part = next(self.parts, None)
                if part is None:
                    break
                self.pending += part
            data, self.pending = self.pending[:size], self.pending[size:]
            return data

    sink = SimpleNamespace(
        add_records=lambda batch: None,
        add_anomalies=lambda batch: None,
        add_issues=lambda batch: None,
        reset=lambda: None,
    )
    tracemalloc.start()
    try:
        outcome = engine.process(
            lambda: Generated(count), size=1, rules=DEFAULT_RULES, sink=sink
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.record_count == count
    assert outcome.summary["size"] > count * pad >= 40_000_000
    assert peak < 6_000_000


# --- strict and fast parsers agree -----------------------------------------------

VALID_DOCUMENTS = [
    b"{}",
    b"[]",
    b"0",
    b"-0",
    b"-0.0",
    b"1.5e-7",
    b"1E+2",
    b"9223372036854775807",
    b'""',
    b'"\\u0000\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00'
    b' caf\xc3\xa9 \xf0\x9f\x98\x80"',
    b' \t\r\n{ "a" : [ 1 , 2.5 , true , false , null , { } , [ ] ] } \r\n',
    b'{"a": {"b": {"c": [[[["deep"]]]]}}, "a": 2}',
    b"[1.7976931348623157e308, 5e-324, 1e-400, 123456789012345678]",
    b'["\x7f", "\\u20ac", "\\uD83D\\uDE00"]',
]


def test_strict_and_fast_events_agree() -> None:
    documents = [*VALID_DOCUMENTS, sample_like(20)]
    documents.append((SAMPLES / "server_4.json").read_bytes())
    for doc in documents:
        expected = list(ijson.basic_parse(io.BytesIO(doc), use_float=True))
        assert fast_events(doc) == expected, doc
        for step in (None, 1, 3, 200):
            assert strict_events(doc, step) == expected, (doc, step)


def test_strict_and_fast_events_agree_across_chunks() -> None:
    rng = random.Random(7)
    pieces = []
    for i in range(6000):
        pieces.append(
            {
                "k" * rng.randint(1, 40): "x\\é\U0001f600\n" * rng.randint(0, 30),
                "n": rng.choice(
                    [
                        rng.randint(-(10**15), 10**15),
                        rng.random() * 10 ** rng.randint(-30, 30),
                    ]
                ),
                "i": i,
            }
        )
    for ensure_ascii in (True, False):
        doc = json.dumps(pieces, ensure_ascii=ensure_ascii).encode()
        assert len(doc) > 3 * jsonstrict.CHUNK_SIZE
        expected = list(ijson.basic_parse(io.BytesIO(doc), use_float=True))
        assert fast_events(doc, step=7919) == expected
        assert strict_events(doc) == expected
        assert strict_events(doc, step=4099) == expected


@pytest.mark.parametrize(
    "doc",
    [
        b'["\\ud800"]',
        b'["\\ud800\\u0041"]',
        b'["\\uDBFF\\uDBFF\\uDC00"]',
        b'["\\udc00"]',
        b'["x\\ud800"]',
        b"\x0c[1]",
        b"[1,\x0b2]",
        b"[0." + b"0" * 200 + b"1]",
    ],
)
def test_prefilter_catches_what_yajl_gets_wrong(doc: bytes) -> None:
    assert fast_events(doc) is None
    # Also when the suspicious bytes straddle two reads.
    for step in (1, 2, 5, 9):
        assert fast_events(doc, step=step) is None
    with pytest.raises(jsonstrict.JSONSyntaxError):
        strict_events(doc)


def test_unterminated_string_after_the_document() -> None:
    # yajl accepts these when nothing follows the unterminated string.
    for doc in (b'{} "', b'[1] "abc', b'{"metrics": []}"}', b'1"99'):
        assert fast_events(doc) is None, doc
        assert malformed(doc).message == "Extra data after the document"


def test_prefilter_waits_for_the_low_half_of_a_pair() -> None:
    doc = b'["' + b"a" * 65530 + b'\\ud83d\\ude00"]'
    for step in (None, 65536 - 3, 65536 + 1):
        assert fast_events(doc, step=step) == strict_events(doc)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    value=json_values, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 0, 2])
)
def test_property_strict_matches_yajl_on_valid_json(
    value, ensure_ascii: bool, indent
) -> None:
    doc = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()
    expected = list(ijson.basic_parse(io.BytesIO(doc), use_float=True))
    assert strict_events(doc) == expected
    assert strict_events(doc, step=3) == expected
    assert fast_events(doc) == expected
    # Valid JSON is never malformed; a stray "metrics" key may make it invalid.
    with contextlib.suppress(DocumentInvalid):
        run(doc)


MUTATION_BYTES = [
    b"\\u",
    b"d800",
    b"\\udc00",
    b"\\ud83d",
    b"\xff",
    b"\xc3",
    b"\xe2\x82\xac",
    b"\x00",
    b"\x0b",
    b"\x0c",
    b"\t",
    b"\n",
    b'"',
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"-",
    b"e",
    b"9" * 30,
    b"1e400",
    b"NaN",
    b"null",
    b" ",
    b"\xef\xbb\xbf",
]
SEED_DOCUMENTS = [
    *VALID_DOCUMENTS,
    json.dumps(
        {"server_id": "a", "metrics": [record(), record(cpu_usage=99.5)]}
    ).encode(),
    json.dumps(
        [{"server_name": "b", "metrics": [record(memory_usage=[1])]}, {"metrics": []}],
        indent=1,
    ).encode(),
]


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.sampled_from(SEED_DOCUMENTS),
    edits=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=1),
            st.sampled_from(["insert", "delete", "replace"]),
            st.sampled_from(MUTATION_BYTES) | st.binary(min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_property_mutated_documents(seed: bytes, edits) -> None:
    doc = seed
    for where, operation, data in edits:
        at = int(where * len(doc))
        if operation == "insert":
            doc = doc[:at] + data + doc[at:]
        elif operation == "delete":
            doc = doc[:at] + doc[at + len(data) :]
        else:
            doc = doc[:at] + data + doc[at + len(data) :]
    check_never_raises_foreign(doc)
    # Whatever yajl accepts past the prefilter, the strict tokenizer accepts
    # identically: the fast pass never decides differently.
    fast = fast_events(doc)
    if fast is not None:
        try:
            strict = strict_events(doc)
        except jsonstrict.JSONSyntaxError as exc:
            assert exc.message.startswith("Nesting deeper"), (doc, exc)
        else:
            assert strict == fast, doc


@settings(max_examples=300, deadline=None, database=None)
@given(doc=st.binary(max_size=300))
def test_property_arbitrary_bytes(doc: bytes) -> None:
    check_never_raises_foreign(doc)


def check_never_raises_foreign(doc: bytes) -> None:
    """`process` returns an Outcome or raises a ProcessingError with a message."""
    try:
        outcome, _ = run(doc)
    except DocumentMalformed as error:
        assert error.message
        assert error.line >= 1 and error.column >= 1
        assert 0 <= error.offset <= len(doc)
        try:
            strict_events(doc)
        except jsonstrict.JSONSyntaxError as exc:
            assert (exc.line, exc.column, exc.offset) == (
                error.line,
                error.column,
                error.offset,
            )
        else:
            pytest.fail("strict tokenizer accepts a malformed document")
    except DocumentInvalid as error:
        assert error.message and error.pointer is not None
    else:
        assert isinstance(outcome, Outcome)
        json.dumps(outcome.summary)


# --- numbers at the edges of a double ------------------------------------------


@pytest.mark.parametrize(
    ("values", "mean"),
    [
        ([1e308, 1e308, 1e308, -1e308], 5e307),
        ([1.7976931348623157e308] * 3, 1.7976931348623157e308),
        ([1e308, -1e308, 1e308, -1e308], 0.0),
        ([5e-324, 5e-324], 5e-324),
        ([-0.0, -0.0], 0.0),
        ([2.2250738585072014e-308, 1e-300], (2.2250738585072014e-308 + 1e-300) / 2),
        ([1e200, -1e200, 3.0], 1.0),
    ],
)
def test_any_finite_doubles_have_a_finite_summary(values, mean) -> None:
    records = [
        record(f"2024-09-19T10:00:{i:02d}Z", cpu_usage=v) for i, v in enumerate(values)
    ]
    outcome, sink = run(server_doc(records))
    stats = outcome.summary["metrics"]["cpu_usage"]

    assert (stats["min"], stats["max"], stats["count"]) == (
        min(values),
        max(values),
        len(values),
    )
    assert stats["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-320)
    assert math.isfinite(stats["mean"])
    assert len(sink.records) == len(values)
    assert json.loads(json.dumps(outcome.summary, allow_nan=False))


def test_a_sum_that_overflows_in_a_later_batch_stays_finite(monkeypatch) -> None:
    monkeypatch.setattr(engine, "BATCH_SIZE", 2)
    values = [1e308, 1e308, 1e308, 1e308, 5.0, -1e308]
    records = [
        record(f"2024-09-19T10:00:{i:02d}Z", cpu_usage=v) for i, v in enumerate(values)
    ]
    outcome, _ = run(server_doc(records))
    stats = outcome.summary["metrics"]["cpu_usage"]
    assert stats["mean"] == pytest.approx(5e307, rel=1e-12)  # (4e308 + 5 - 1e308) / 6


def test_numbers_beyond_a_double_are_invalid_records() -> None:
    doc = server_doc([record(), record()]).replace(
        b'"cpu_usage": 10', b'"cpu_usage": 1e400', 1
    )
    outcome, sink = run(doc)
    assert outcome.record_count == 1
    assert sink.issues == [
        RecordIssue("/metrics/0/cpu_usage", "cpu_usage must be a finite number")
    ]


# --- anomaly_text ----------------------------------------------------------------


def make_anomaly(metric: str, value, minute: int) -> Anomaly:
    stamp = datetime(2024, 9, 19, 10, minute, tzinfo=UTC)
    return Anomaly(0, stamp, "s", metric, value, 0, 85)


def test_anomaly_text() -> None:
    anomalies = [
        make_anomaly("cpu_usage", 800, 1),
        make_anomaly("memory_usage", 95.0, 2),
        make_anomaly("disk_read", 500.5, 3),
    ]
    assert engine.anomaly_text(anomalies) == (
        "cpu_usage out of range: 800 at 2024-09-19T10:01:00Z, "
        "memory_usage out of range: 95 at 2024-09-19T10:02:00Z, "
        "disk_read out of range: 500.5 at 2024-09-19T10:03:00Z"
    )
    assert engine.anomaly_text(anomalies, limit=2) == (
        "cpu_usage out of range: 800 at 2024-09-19T10:01:00Z, "
        "memory_usage out of range: 95 at 2024-09-19T10:02:00Z, ... and 1 more"
    )
    assert engine.anomaly_text(anomalies[:1], limit=20, total=41) == (
        "cpu_usage out of range: 800 at 2024-09-19T10:01:00Z, ... and 40 more"
    )
    assert engine.anomaly_text([]) == ""


def test_anomaly_text_takes_model_like_objects() -> None:
    paris = timezone(timedelta(hours=2))
    row = SimpleNamespace(
        metric="response_time",
        value=1e20,
        timestamp=datetime(2024, 9, 19, 12, 0, 0, 500, tzinfo=paris),
    )
    assert engine.anomaly_text([row]) == (
        "response_time out of range: 1e+20 at 2024-09-19T10:00:00.000500Z"
    )
