"""Reads: the records chosen for the seed app's charts."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from files import selectors, services
from files.models import File

from .factories import METRIC_NAMES, upload

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]

CALM = (10, 20, 30, 40, 50, 60, 70)  # inside every default rule
SPIKE = (99, 20, 30, 40, 50, 60, 70)  # cpu_usage above 85
START = datetime(2024, 9, 19, 10, tzinfo=UTC)


def processed(user, rows: list) -> File:
    """A processed file of one record a second; a row that is not a tuple of
    metrics is the `cpu_usage` of an invalid record."""
    metrics = []
    for second, row in enumerate(rows):
        values = row if isinstance(row, tuple) else (row, *CALM[1:])
        stamp = (START + timedelta(seconds=second)).isoformat()
        record = dict(zip(METRIC_NAMES, values, strict=True))
        metrics.append({"timestamp": stamp, **record})
    content = json.dumps({"server_id": "s1", "metrics": metrics}).encode()
    file = services.file_create(owner=user, upload=upload(content))
    return services.file_process(file_id=file.pk, task_id=file.task_id)


def cpu_values(records: list[dict]) -> list[float]:
    return [record["cpu_usage"] for record in records]


def positions(records: list[dict]) -> list[int]:
    """Each record's position in the file, from its timestamp."""
    return [int((r["timestamp"] - START).total_seconds()) for r in records]


def test_a_small_file_gives_every_record_in_order(user, rules):
    file = processed(user, [CALM, SPIKE, CALM])
    records = selectors.metric_record_sample(file=file)
    assert [set(r) for r in records] == [{"timestamp", *METRIC_NAMES}] * 3
    assert cpu_values(records) == [10, 99, 10]
    assert positions(records) == [0, 1, 2]


def test_a_large_file_is_evenly_downsampled_and_keeps_every_spike(user, rules):
    spikes = {7, 333, 998}  # none at a bucket's first position
    rows = [SPIKE if n in spikes else CALM for n in range(1000)]
    file = processed(user, rows)

    records = selectors.metric_record_sample(file=file, limit=50)

    assert len(records) == 50  # one per bucket of 20 positions
    assert cpu_values(records).count(99) == 3
    # Each bucket's first record, or its spike instead.
    chosen = positions(records)
    assert [n // 20 for n in chosen] == list(range(50))
    assert {n for n in chosen if n % 20} == spikes


def test_more_anomalous_records_than_buckets_stay_within_the_limit(user, rules):
    file = processed(user, [SPIKE] * 120)
    records = selectors.metric_record_sample(file=file, limit=25)
    assert len(records) == 24  # 120 positions in buckets of 5
    assert set(cpu_values(records)) == {99}


def test_invalid_records_leave_no_bucket_empty(user, rules):
    # Invalid records are not stored but count in the positions: the first
    # position of most buckets holds none.
    rows = ["bad" if n % 10 < 3 else CALM for n in range(200)]
    file = processed(user, rows)
    records = selectors.metric_record_sample(file=file, limit=20)
    assert [n // 10 for n in positions(records)] == list(range(20))
    assert all(n % 10 == 3 for n in positions(records))


def test_a_file_without_records_gives_none(user, rules):
    file = services.file_create(owner=user, upload=upload(b"[1, 2]"))
    assert selectors.metric_record_sample(file=file) == []
    services.file_process(file_id=file.pk, task_id=file.task_id)
    assert selectors.metric_record_sample(file=file) == []


def test_the_selection_takes_a_few_queries_whatever_the_size(
    user, rules, django_assert_max_num_queries
):
    file = processed(user, [SPIKE if n % 7 == 0 else CALM for n in range(3000)])
    with django_assert_max_num_queries(4):
        records = selectors.metric_record_sample(file=file, limit=100)
    assert len(records) == 100


# --- chart series ------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        [1e200, -1e200, 1e200, -3e200],
        [1e308, 1e308, 1.7976931348623157e308, 1e308],
        [5e-324, 5e-324, 1e-310, 3e-310],
        [-0.0, 10.0, 20.0, 30.0],
    ],
)
def test_a_bucket_of_extreme_values_has_a_finite_mean(user, rules, values):
    file = processed(user, values)

    series = selectors.metric_series(file=file, metric="cpu_usage", points=2)

    buckets = series["series"]
    assert [b["count"] for b in buckets] == [2, 2]
    assert [b["mean"] for b in buckets] == pytest.approx(
        [values[0] / 2 + values[1] / 2, values[2] / 2 + values[3] / 2],
        rel=1e-9,
        abs=1e-320,
    )
    assert [(b["min"], b["max"]) for b in buckets] == [
        (min(values[:2]), max(values[:2])),
        (min(values[2:]), max(values[2:])),
    ]
