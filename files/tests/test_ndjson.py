"""Tests of JSON Lines processing (`files/ndjson.py`): pure Python, no Django."""

import io
import json
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from files import ndjson
from files.engine import (
    DEFAULT_RULES,
    DocumentInvalid,
    DocumentMalformed,
    ProcessingError,
)
from files.jsonread import Progress, typed_lines
from files.jsonstrict import CHUNK_SIZE, MAX_NUMBER_LENGTH
from files.tests.factories import METRIC_NAMES, metrics_document
from files.tests.test_engine import MemorySink, TrickleIO


def line(server: str = "web-1", minute: int = 0, **metrics) -> str:
    return json.dumps(
        {
            "server_id": server,
            "timestamp": f"2024-09-19T10:{minute:02d}:00Z",
            "cpu_usage": 40,
            **metrics,
        }
    )


def plain(server: str = "web-1", second: int = 0, **fields) -> str:
    """A line msgspec takes: every metric a number, the timestamp a string."""
    record = {
        "server_id": server,
        "timestamp": f"2024-09-19T10:00:{second:02d}Z",
        **dict.fromkeys(METRIC_NAMES, 50.5),
    }
    return json.dumps(record | fields)


def run(text: bytes, step: int | None = None):
    sink = MemorySink()

    def open_stream():
        return io.BytesIO(text) if step is None else TrickleIO(text, step)

    outcome = ndjson.process(
        open_stream, size=len(text), rules=DEFAULT_RULES, sink=sink
    )
    return outcome, sink


def run_strict(text: bytes):
    """The strict pass alone, as the fast pass's fallback runs it."""
    sink = MemorySink()
    walk = ndjson._LinesWalk(DEFAULT_RULES, sink, strict=True)
    lines = ndjson._StrictLines(io.BytesIO(text), Progress(len(text), None))
    return walk.walk(lines), sink


def everything(runner, text: bytes):
    """All a run gives: the outcome and what the sink got, or the error."""
    try:
        outcome, sink = runner(text)
    except ProcessingError as error:
        return type(error).__name__, error.as_dict()
    return outcome, sink.records, sink.issues, sink.anomalies


def position(error: ProcessingError):
    return error.message, error.line, error.column, error.offset


def issues(sink: MemorySink) -> list[tuple[str, str]]:
    return [(issue.pointer, issue.message) for issue in sink.issues]


def test_records_of_several_servers_with_exact_counts_and_summary():
    text = "\n".join(
        [
            line("web-1", 0, cpu_usage=90),
            line("web-2", 1),
            line("web-1", 2, memory_usage=95, response_time=500),
        ]
    ).encode()

    outcome, sink = run(text)

    assert outcome.kind == "server_metrics"
    assert (outcome.record_count, outcome.invalid_record_count) == (3, 0)
    assert outcome.anomaly_count == 3
    assert [(r.index, r.server) for r in sink.records] == [
        (0, "web-1"),
        (1, "web-2"),
        (2, "web-1"),
    ]
    assert sorted((a.record_index, a.metric) for a in sink.anomalies) == [
        (0, "cpu_usage"),
        (2, "memory_usage"),
        (2, "response_time"),
    ]
    summary = outcome.summary
    assert summary["format"] == "ndjson"
    assert summary["server_count"] == 2
    assert summary["servers"] == [
        {"id": "web-1", "name": None, "location": None, "record_count": 2},
        {"id": "web-2", "name": None, "location": None, "record_count": 1},
    ]
    assert summary["first_timestamp"] == "2024-09-19T10:00:00Z"
    assert summary["anomalies_by_metric"] == {
        "cpu_usage": 1,
        "memory_usage": 1,
        "response_time": 1,
    }
    assert summary["size"] == len(text)


def test_invalid_records_are_skipped_with_the_line_index_as_pointer():
    lines = [
        line("web-1", 0),
        json.dumps({"timestamp": "2024-09-19T10:01:00Z", "cpu_usage": 1}),
        json.dumps({"server_id": 7, "timestamp": "2024-09-19T10:01:00Z"}),
        "",
        line("web-1", 3, cpu_usage="high"),
        json.dumps({"server_id": "web-1", "timestamp": "noon"}),
        "[1, 2]",
        json.dumps({"server_id": "web-1", "metrics": 5}),
        line("web-2", 9),
    ]

    outcome, sink = run("\n".join(lines).encode())

    assert (outcome.record_count, outcome.invalid_record_count) == (2, 6)
    assert issues(sink) == [
        ("/1/server_id", "server_id is required"),
        ("/2/server_id", "server_id must be a string, got number"),
        ("/4/cpu_usage", "cpu_usage must be a number, got string"),
        ("/5/timestamp", "timestamp is not ISO 8601: 'noon'"),
        ("/6", "record must be an object, got array"),
        ("/7/metrics", "metrics must be an array, got number"),
    ]
    # Every value counts in the running record index, valid or not.
    assert [r.index for r in sink.records] == [0, 7]


def test_a_malformed_line_fails_the_file_with_its_line_column_and_offset():
    good = line("web-1", 0)
    bad = '{"server_id": "web-1", "timestamp": "2024-09-19T10:01:00Z",, "cpu": 1}'
    text = f"{good}\n\n{good}\n{bad}\n{good}\n".encode()

    with pytest.raises(DocumentMalformed) as caught:
        run(text)

    offset = text.index(b",,") + 1
    assert position(caught.value) == (
        "Expecting a string key",
        4,
        bad.index(",,") + 2,
        offset,
    )


@pytest.mark.parametrize(
    ("bad", "message", "column"),
    [
        ('{"server_id": "a"} {"server_id": "b"}', "Extra data after the line's", 20),
        ('{"server_id": "a",', "Unexpected end of line", 19),
        ('{"server_id": "a", "cpu_usage": NaN}', "Unexpected character 'N'", 33),
        ('{"server_id": "\\ud800"}', "Lone surrogate \\ud800", 16),
        ('{"cpu_usage": 1' + "0" * 200 + "}", "Number literal longer", 15),
        ('  {"v": "\x0b"}', "Unescaped control character U+000B", 10),
        ("\ufeff{}", "Unexpected character '\\ufeff'", 1),
        ("[" * 600 + "]" * 600, "Nesting deeper than 512", 513),
    ],
)
def test_each_line_is_parsed_as_strictly_as_a_document(bad, message, column):
    text = (line() + "\n" + bad + "\n").encode()

    with pytest.raises(DocumentMalformed) as caught:
        run(text)

    error = caught.value
    assert error.message.startswith(message)
    assert (error.line, error.column) == (2, column)
    assert error.offset == len(line()) + 1 + len(bad[: column - 1].encode())


def test_blank_lines_crlf_a_bom_and_no_final_newline_are_accepted():
    text = (
        b"\xef\xbb\xbf"
        + line("a", 0).encode()
        + b"\r\n\r\n   \t\r\n"
        + line("a", 1).encode()
        + b"\r\n"
        + line("b", 2).encode()
    )

    outcome, sink = run(text)

    assert outcome.record_count == 3
    assert [r.server for r in sink.records] == ["a", "a", "b"]


def test_a_server_document_per_line_and_records_of_the_same_server_add_up():
    document = metrics_document()
    document["metrics"][3]["cpu_usage"] = "n/a"
    text = "\n".join(
        [json.dumps(document), line("server_002", 30), json.dumps(document)]
    ).encode()

    outcome, sink = run(text)

    # server_4's 9 records twice, one of them invalid each time, and one line.
    assert (outcome.record_count, outcome.invalid_record_count) == (17, 2)
    assert issues(sink) == [
        ("/0/metrics/3/cpu_usage", "cpu_usage must be a number, got string"),
        ("/2/metrics/3/cpu_usage", "cpu_usage must be a number, got string"),
    ]
    assert outcome.summary["servers"] == [
        {
            "id": "server_002",
            "name": "web-server-03",
            "location": "data-center-4",
            "record_count": 17,
        }
    ]
    assert outcome.summary["depth"] == 3


def test_a_line_longer_than_a_chunk_is_streamed_in_both_passes():
    records = [json.loads(line("x", minute % 60)) for minute in range(3000)]
    long_line = json.dumps({"server_id": "x", "metrics": records})
    assert len(long_line) > 3 * CHUNK_SIZE
    text = f"{line('x', 1)}\n{long_line}\n{line('x', 2)}\n".encode()

    fast, fast_sink = run(text, step=1000)
    strict, strict_sink = run_strict(text)

    assert fast.record_count == strict.record_count == 3002
    assert fast == strict
    assert fast_sink.records == strict_sink.records


def test_an_integer_beyond_64_bits_is_processed_by_the_strict_pass():
    text = (line("a", 0) + "\n" + line("a", 1, disk_read=2**70) + "\n").encode()

    outcome, sink = run(text)

    assert sink.resets == 1
    assert outcome.record_count == 2
    assert sink.records[1].values[2] == 2**70


def test_no_valid_record_fails_the_file():
    text = b'{"note": "hello"}\n{"note": "world"}\n'

    with pytest.raises(DocumentInvalid) as caught:
        run(text)

    assert caught.value.message == "no valid metrics record"


def test_memory_stays_bounded_for_many_lines():
    class Lines(io.RawIOBase):
        """200,000 record lines, produced as read."""

        def __init__(self) -> None:
            self.left = 200_000
            self.pending = b""

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            while len(self.pending) < size and self.left:
                self.left -= 1
                self.pending += (
                    line(f"s{self.left % 7}", self.left % 60) + "\n"
                ).encode()
            data, self.pending = self.pending[:size], self.pending[size:]
            return data

    sink = MemorySink()
    sink.add_records = lambda batch: None
    sink.add_anomalies = lambda batch: None
    tracemalloc.start()
    try:
        outcome = ndjson.process(Lines, size=1, rules=DEFAULT_RULES, sink=sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert outcome.record_count == 200_000
    assert peak < 20 * 1024 * 1024


lines_of_text = st.lists(
    st.one_of(
        st.just(line("a", 1)),
        st.just(json.dumps(metrics_document())),
        st.just(""),
        st.just("   \r"),
        st.text(alphabet='{}[]":, 0123456789.eE-\\ufdtrnaslx\t\r', max_size=30),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=lines_of_text)
def test_property_the_fast_pass_agrees_with_the_strict_one(lines):
    text = "\n".join(lines).encode()

    assert everything(run, text) == everything(run_strict, text)


def test_runs_of_plain_lines_are_decoded_at_once_up_to_the_line_in_doubt():
    lines = [plain(second=n) for n in range(3)]
    run_bytes = "\n".join(lines).encode()
    records, stop = typed_lines(run_bytes)
    assert [r.timestamp[-3:] for r in records] == ["00Z", "01Z", "02Z"]
    assert stop == len(run_bytes) + 1

    doubtful = [
        plain(cpu_usage="high"),  # not a number
        "",  # a blank line
        "   " + plain(),  # a blank before the value is fine for msgspec
        plain() + " " + plain(),  # two values
        plain()[:-1] + "\n}",  # one value over two lines: checked below
        plain(location="caf\u00e9"),  # an escape: the tokenizer's
        plain(server_name="{curly}"),  # a "{" in a string
        plain(extra={"nested": 1}),  # a nested object
        plain(metrics=3),  # a metrics member that is no array
        plain(cpu_usage=int("9" * (MAX_NUMBER_LENGTH + 1))),  # over the limit
    ]
    for bad in doubtful:
        text = "\n".join([lines[0], bad, lines[1]]).encode()
        records, stop = typed_lines(text)
        if bad.startswith("   "):
            assert (len(records), stop) == (3, len(text) + 1)
            continue
        # Only the line before the doubt is taken; the rest is the caller's.
        assert len(records) <= 1, bad
        assert stop in (0, len(lines[0]) + 1), bad


@pytest.mark.parametrize("step", [None, 1, 5, 300])
def test_runs_of_plain_lines_and_lines_in_doubt_give_the_strict_outcome(step):
    lines = [plain("a", n % 60) for n in range(40)]
    lines[3] = plain("b", 3, server_name="B", location="L")
    lines[7] = plain("b", 7, timestamp="yesterday")
    lines[9] = ""
    lines[12] = plain("c", 12, cpu_usage=None)
    lines[20] = plain("a", 20, cpu_usage=99)  # an anomaly
    lines[25] = json.dumps(metrics_document())
    lines[30] = plain("d", 30, timestamp="2024-09-19T12:00:00+02:00")
    text = "\r\n".join(lines).encode()
    outcome, sink = run(text, step)
    strict_outcome, strict_sink = run_strict(text)
    assert outcome == strict_outcome
    assert sink.records == strict_sink.records
    assert sink.issues == strict_sink.issues
    assert sink.anomalies == strict_sink.anomalies
    assert issues(sink) == [
        ("/7/timestamp", "timestamp is not ISO 8601: 'yesterday'"),
        ("/12/cpu_usage", "cpu_usage must be a number, got null"),
    ]
    servers = {s["id"]: s for s in outcome.summary["servers"]}
    assert servers["b"] == {"id": "b", "name": "B", "location": "L", "record_count": 1}


def test_a_value_over_two_lines_fails_the_file_even_between_plain_lines():
    # Joined with a comma, the two halves would make one valid record.
    half = plain()[:-1]
    text = "\n".join([plain(), half[:40], half[40:] + "}", plain()]).encode()
    with pytest.raises(DocumentMalformed) as raised:
        run(text)
    assert raised.value.line == 2


def _member(name: str) -> st.SearchStrategy[str]:
    value = st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-(10**20), 10**20),
        st.sampled_from(["2024-09-19T10:00:00Z", "x", "", None, True]),
        st.sampled_from([[], {}, [1], {"a": {}}]),
    )
    return value.map(lambda v: f"{json.dumps(name)}: {json.dumps(v)}")


_NAMES = ["server_id", "timestamp", "server_name", "location", "metrics", "other"]
_plain_lines = st.builds(
    plain,
    st.sampled_from(["a", "b", ""]),
    st.integers(0, 59),
    server_name=st.sampled_from(["A", "", None]),
)
_any_record = st.lists(st.sampled_from(_NAMES + list(METRIC_NAMES)), max_size=12)
records_of_text = st.lists(
    st.one_of(
        _plain_lines,
        _plain_lines,
        _plain_lines,
        _any_record.flatmap(lambda names: st.tuples(*map(_member, names))).map(
            lambda members: "{" + ", ".join(members) + "}"
        ),
    ),
    min_size=1,
    max_size=12,
)
# Where, how many bytes to drop, what to put in their place.
_mangles = st.lists(
    st.tuples(
        st.integers(0, 4000),
        st.integers(0, 2),
        st.sampled_from(
            [
                "",
                "\n",
                " ",
                "{",
                "}",
                ",",
                '"',
                "\r\n",
                "]",
                "\n{",
                "\x0b",
                "\\ud800",
                "\\u00e9",
            ]
        ),
    ),
    max_size=3,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=records_of_text, mangles=_mangles, step=st.sampled_from([None, 1, 13]))
def test_property_plain_and_mangled_records_give_the_strict_outcome(
    lines, mangles, step
):
    text = "\n".join(lines)
    for cut, drop, insert in mangles:
        cut %= len(text) + 1
        text = text[:cut] + insert + text[cut + drop :]
    data = text.encode()

    assert everything(lambda t: run(t, step), data) == everything(run_strict, data)


def test_a_lone_surrogate_escape_at_the_very_end_is_the_strict_passs_to_judge():
    # yajl would make it "?"; the prefilter judges the last bytes at the end.
    text = (plain() + "\n" + plain(server_name="\ud800")).encode()
    assert text.endswith(b'"\\ud800"}')
    with pytest.raises(DocumentMalformed) as raised:
        run(text)
    assert (raised.value.message, raised.value.line) == (
        "Lone surrogate \\ud800 in string",
        2,
    )
