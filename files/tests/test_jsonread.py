"""The reading paths against the strict one: identical outcomes on any document.

`engine.process` reads a metrics document by the records path (the strict
tokenizer with runs of records taken by msgspec) and anything else by yajl with
the strict pass after it. Whatever the path, a document must come out exactly as
the strict tokenizer alone makes it: the same kind, summary and counts, the same
records, anomalies and issues in the same order, or the same error with the same
message, line, column, offset and pointer. Hypothesis generates the documents
(numbers at every edge, escapes, a BOM, duplicate keys, deep nesting, records of
every wrong shape) and mutates their bytes.
"""

import io
import json
import math
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from files import engine, jsonread, jsonstrict
from files.engine import DEFAULT_RULES, METRICS, ProcessingError
from files.jsonstrict import JSONSyntaxError


class ListSink:
    """Keeps every batch, in order."""

    def __init__(self) -> None:
        self.records: list = []
        self.anomalies: list = []
        self.issues: list = []
        self.resets = 0

    def add_records(self, batch: list) -> None:
        assert len(batch) <= engine.BATCH_SIZE
        self.records += batch

    def add_anomalies(self, batch: list) -> None:
        assert len(batch) <= engine.BATCH_SIZE
        self.anomalies += batch

    def add_issues(self, batch: list) -> None:
        self.issues += batch

    def reset(self) -> None:
        self.resets += 1
        self.records, self.anomalies, self.issues = [], [], []


class Trickle(io.RawIOBase):
    """A stream returning at most `step` bytes a read."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data = data
        self.at = 0
        self.step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self.step if size < 0 else min(size, self.step)
        chunk = self.data[self.at : self.at + size]
        self.at += len(chunk)
        return chunk


def result(error: ProcessingError | None, outcome, sink: ListSink) -> tuple:
    """What a user can see of a run, exactly (repr keeps 1 apart from 1.0)."""
    if error is not None:
        return ("failed", type(error).__name__, error.as_dict())
    return (
        "processed",
        repr(outcome),
        repr(sink.records),
        repr(sink.anomalies),
        repr(sink.issues),
    )


def processed(doc: bytes, step: int | None = None) -> tuple:
    """`doc` through `engine.process`, as a worker reads it."""
    sink = ListSink()

    def open_stream():
        return io.BytesIO(doc) if step is None else Trickle(doc, step)

    try:
        outcome = engine.process(
            open_stream, size=len(doc), rules=DEFAULT_RULES, sink=sink
        )
    except ProcessingError as exc:
        return result(exc, None, sink)
    return result(None, outcome, sink)


def strict(doc: bytes) -> tuple:
    """`doc` read by the strict tokenizer alone, walked by the engine's walker."""
    sink = ListSink()
    events, size_of = jsonread.read_strict(
        io.BytesIO(doc), jsonread.Progress(len(doc), None)
    )
    walk = engine._Walk(events, DEFAULT_RULES, sink, strict=True)
    try:
        outcome = walk.run(size_of)
    except JSONSyntaxError as exc:
        error = engine.DocumentMalformed(exc.message, exc.line, exc.column, exc.offset)
        return result(error, None, sink)
    except ProcessingError as exc:
        return result(exc, None, sink)
    return result(None, outcome, sink)


# --- generated documents ---------------------------------------------------------

EDGE_NUMBERS = [
    "0",
    "-0",
    "0.0",
    "-0.0",
    "1",
    "85",
    "85.0",
    "85.00000000000001",
    "-1e-7",
    "1E5",
    "1e+2",
    "2.5E-3",
    "1e400",
    "-1e400",
    "1e-400",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "5e-324",
    "2.2250738585072011e-308",
    "0.1000000000000000055511151231257827",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "-9223372036854775809",
    "1" + "0" * 99,
    "1" + "0" * 100,
    "0." + "3" * 98,
    "0." + "3" * 99,
]
# Each rule's bounds and the numbers either side of them.
RULE_EDGES = sorted(
    {
        text
        for rule in DEFAULT_RULES
        for bound in (rule.low, rule.high)
        for text in (
            str(bound),
            f"{bound}.0",
            repr(math.nextafter(bound, math.inf)),
            repr(math.nextafter(bound, -math.inf)),
            f"{bound}e0",
        )
    }
)
rule_edge = st.sampled_from(RULE_EDGES)
number = st.one_of(
    rule_edge,
    st.sampled_from(EDGE_NUMBERS),
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(min_value=-50, max_value=1500).map(lambda f: f"{f:.1f}"),
)
TIMESTAMPS = [
    "2024-09-19T10:00:00Z",
    "2024-09-19T10:00:00",
    "2024-09-19T10:00:00.123456Z",
    "2024-09-19T10:00:00+05:30",
    "2024-09-19 10:00:00",
    "2024-09-19",
    "2024-13-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "yesterday",
    "",
]
timestamp = st.one_of(
    st.sampled_from(TIMESTAMPS).map(json.dumps),
    # The same written with escapes, which only the tokenizer reads.
    st.sampled_from(TIMESTAMPS[:4]).map(
        lambda t: json.dumps(t).replace("Z", "\\u005a")
    ),
)
text = st.one_of(
    st.text(max_size=12).map(lambda t: json.dumps(t, ensure_ascii=False)),
    st.text(max_size=12).map(json.dumps),
    st.sampled_from(
        [
            '"\\ud800"',
            '"\\udc00x"',
            '"\\ud83d\\ude00"',
            '"a\\/b"',
            '"{[}]"',
            '"\\u0000"',
        ]
    ),
)
scalar = st.one_of(number, text, st.sampled_from(["true", "false", "null"]))
value = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(text, inner), max_size=3).map(
            lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=6,
)
space = st.sampled_from(["", " ", "\n", "\n  ", "\t", "\r\n"])


@st.composite
def metrics_record(draw) -> str:
    """A record: mostly a valid one, else with every kind of wrong field."""
    gap = draw(space)
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return draw(st.one_of(scalar, st.just("[]"), st.just("[1, {}]")))
    if shape < 5:
        # What nearly every real record is: a timestamp and every metric a number.
        members = [("timestamp", json.dumps(draw(st.sampled_from(TIMESTAMPS))))]
        members += [(name, draw(st.one_of(rule_edge, number))) for name in METRICS]
        return "{" + ",".join(f"{gap}{json.dumps(k)}: {v}" for k, v in members) + "}"
    members = [("timestamp", draw(timestamp))]
    members += [(name, draw(number)) for name in METRICS]
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*METRICS, "timestamp", "note", "tags", "Cpu"]))
        members.insert(
            draw(st.integers(0, len(members))),
            (key, draw(st.one_of(number, value, timestamp))),
        )
    if draw(st.booleans()):
        members = [m for m in members if m[0] != draw(st.sampled_from(METRICS))]
    return "{" + ",".join(f"{gap}{json.dumps(k)}: {v}" for k, v in members) + "}"


@st.composite
def server(draw) -> str:
    gap = draw(space)
    records = draw(st.lists(metrics_record(), max_size=12))
    metrics = "[" + ",".join(gap + r for r in records) + gap + "]"
    fields = [f'"server_id": {draw(text)}', f'"metrics": {metrics}']
    if draw(st.booleans()):
        fields.insert(0, f'"location": {draw(value)}')
    return "{" + ("," + gap).join(fields) + "}"


@st.composite
def document(draw) -> bytes:
    """A metrics document, one server or an array of them, or any JSON value."""
    shape = draw(st.integers(0, 5))
    if shape == 0:
        doc = draw(value)
    elif shape == 1:
        doc = "[" + ", ".join(draw(st.lists(server(), max_size=3))) + "]"
    else:
        doc = draw(server())
    data = doc.encode()
    if draw(st.integers(0, 9)) == 0:
        data = jsonstrict.BOM + data
    return data


INTERESTING = b'{}[],:"\\ \n\t\x0b\x0c0123456789-+.eE' + "é".encode() + b"\xff\x00"


@st.composite
def mutated(draw) -> bytes:
    """A generated document with a few bytes deleted, inserted or replaced."""
    data = bytearray(draw(document()))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(INTERESTING))
        action = draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        if action == "delete" and at < len(data):
            del data[at]
        elif action == "replace" and at < len(data):
            data[at] = byte
        elif action == "truncate":
            del data[at:]
        else:
            data.insert(at, byte)
    return bytes(data)


# Runs of records cut anywhere: windows tried with little of the document at hand,
# the stream read a few bytes at a time.
run_shapes = st.tuples(
    st.sampled_from([jsonstrict._WINDOW_MIN, 0, 40, 200]),
    st.sampled_from([None, 1, 7, 64, 1000]),
)
SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(document(), run_shapes)
def test_generated_documents_come_out_as_the_strict_path_makes_them(doc, shape):
    window_min, step = shape
    with mock.patch.object(jsonstrict, "_WINDOW_MIN", window_min):
        assert processed(doc, step) == strict(doc)


@SETTINGS
@given(mutated(), run_shapes)
def test_mutated_documents_come_out_as_the_strict_path_makes_them(doc, shape):
    window_min, step = shape
    with mock.patch.object(jsonstrict, "_WINDOW_MIN", window_min):
        assert processed(doc, step) == strict(doc)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 600), st.sampled_from(["[", "{"]))
def test_deep_nesting_in_a_record(depth, opener):
    if opener == "[":
        nested = "[" * depth + "1" + "]" * depth
    else:
        nested = '{"k": ' * depth + "1" + "}" * depth
    doc = (
        '{"metrics": [{"timestamp": "2024-09-19T10:00:00Z", "note": '
        + nested
        + ', "cpu_usage": 1}, {"timestamp": "2024-09-19T10:00:01Z"}]}'
    ).encode()
    assert processed(doc) == strict(doc)


def big_document(count: int) -> bytes:
    """A metrics document of `count` records, a few of every wrong shape."""
    wrong = [
        '{"timestamp": "yesterday", "cpu_usage": 1}',
        '{"timestamp": "2024-09-19T10:00:00Z", "cpu_usage": "high"}',
        '{"timestamp": "2024-09-19T10:00:00Z", "network_in": [1, 2]}',
        '{"timestamp": "2024-09-19T10:00:00Z", "disk_read": 1e400}',
        '{"timestamp": "2024-09-19T10:00:00Z", "note": "caf\u00e9", "cpu_usage": 99}',
        '{"timestamp": "2024-09-19T10:00:00\\u005a", "memory_usage": null}',
        "[1]",
    ]
    records = []
    for index in range(count):
        if index % 997 == 0:
            records.append(wrong[index // 997 % len(wrong)])
        else:
            values = ", ".join(
                f'"{name}": {(index * 7 + slot * 13) % 1200 / 10}'
                for slot, name in enumerate(METRICS)
            )
            records.append(
                f'{{"timestamp": "2024-09-19T{index // 3600 % 24:02d}:'
                f'{index // 60 % 60:02d}:{index % 60:02d}Z", {values}}}'
            )
    body = ",\n  ".join(records)
    return f'{{"server_id": "s1", "metrics": [\n  {body}\n]}}'.encode()


def test_a_large_document_across_chunks_and_batches() -> None:
    doc = big_document(3 * engine.BATCH_SIZE + 123)
    expected = strict(doc)
    assert expected[0] == "processed"
    assert processed(doc) == expected
    assert processed(doc, step=5000) == expected


def test_a_metrics_document_is_read_once_by_the_records_path() -> None:
    doc = big_document(2 * engine.BATCH_SIZE)
    sink = ListSink()
    with (
        mock.patch.object(jsonread, "_TYPED", wraps=jsonread._TYPED) as typed,
        mock.patch.object(engine, "read_strict") as strict_pass,
    ):
        outcome = engine.process(
            lambda: io.BytesIO(doc), size=len(doc), rules=DEFAULT_RULES, sink=sink
        )
    # One in 997 records has a wrong shape; one of those shapes is valid.
    assert outcome.record_count == 2 * engine.BATCH_SIZE - 10
    assert outcome.invalid_record_count == 10
    # No second pass, and runs of records decoded by msgspec.
    assert sink.resets == 0
    strict_pass.assert_not_called()
    assert typed.decode.call_count > 10
