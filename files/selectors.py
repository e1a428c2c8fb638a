"""Reads: what a user may see, and the results the API and pages show."""

import math
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import DataError, connection, transaction
from django.db.models import (
    Aggregate,
    Avg,
    Count,
    DecimalField,
    F,
    IntegerField,
    Max,
    Min,
    QuerySet,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast

from .models import METRICS, Anomaly, AnomalyRule, File, MetricRecord, RecordError

SNAPSHOT_RECENT = 20
# In-flight files are bounded by the processing quota; this caps the snapshot
# should the quota be lifted (the rest still arrive as events).
SNAPSHOT_IN_FLIGHT = 200


def file_list(*, user: AbstractBaseUser) -> QuerySet[File]:
    """The user's files, newest first."""
    return File.objects.filter(owner=user)


def file_get(*, user: AbstractBaseUser, file_id: int) -> File | None:
    """One of the user's files, or None: another user's file does not exist for them."""
    return file_list(user=user).filter(pk=file_id).first()


def file_snapshot(*, user: AbstractBaseUser) -> list[File]:
    """The user's recent files and the files still in flight (up to
    SNAPSHOT_IN_FLIGHT of them), newest first."""
    recent = list(file_list(user=user)[:SNAPSHOT_RECENT])
    seen = {f.pk for f in recent}
    in_flight = (
        file_list(user=user)
        .filter(status__in=[File.Status.QUEUED, File.Status.PROCESSING])
        .exclude(pk__in=seen)[:SNAPSHOT_IN_FLIGHT]
    )
    return sorted(
        [*recent, *in_flight], key=lambda f: (f.created_at, f.pk), reverse=True
    )


def anomaly_list(*, file: File) -> QuerySet[Anomaly]:
    """The anomalies found in a file, in record order."""
    return Anomaly.objects.filter(file=file)


def record_error_list(*, file: File) -> QuerySet[RecordError]:
    """The records validation skipped, in document order."""
    return RecordError.objects.filter(file=file)


# Every rule's content in one value, computed by the database (PostgreSQL): any
# change to the rules, from the admin, the API or plain SQL, changes it. A run
# reads it with the file's row, in the same statement, and the rules themselves
# only when it differs from the one this process read them with.
RULES_FINGERPRINT = RawSQL(
    "SELECT md5(coalesce(string_agg(concat_ws(':', metric, min_value, max_value, "
    f"enabled), ',' ORDER BY metric), '')) FROM {AnomalyRule._meta.db_table}",
    [],
)
_rules_kept: tuple[str, list[AnomalyRule]] | None = None


def with_rules_fingerprint(files: QuerySet[File]) -> QuerySet[File]:
    """`files` with each row's `rules_fingerprint` (on PostgreSQL)."""
    if connection.vendor != "postgresql":
        return files
    return files.annotate(rules_fingerprint=RULES_FINGERPRINT)


def rules_active(*, fingerprint: str | None = None) -> list[AnomalyRule]:
    """The enabled anomaly rules.

    Given the rules' `fingerprint` as the caller read it (`with_rules_fingerprint`),
    the ones this process read last, while the fingerprint is the same.
    """
    global _rules_kept
    if fingerprint is not None and _rules_kept and _rules_kept[0] == fingerprint:
        return _rules_kept[1]
    if connection.vendor != "postgresql":
        return list(AnomalyRule.objects.filter(enabled=True))
    # Every rule, each row with the fingerprint of exactly these (one statement).
    rules = list(AnomalyRule.objects.annotate(fingerprint=RULES_FINGERPRINT))
    active = [rule for rule in rules if rule.enabled]
    if rules:
        _rules_kept = (rules[0].fingerprint, active)
    return active


def anomaly_list_head(*, file: File, limit: int) -> list[Anomaly]:
    """The first `limit` anomalies of a file, in document order (for a message)."""
    return list(
        Anomaly.objects.filter(file=file).order_by("record_index", "id")[:limit]
    )


def metric_series(
    *, file: File, metric: str, points: int, server: str | None = None
) -> dict[str, Any]:
    """A metric's series downsampled in SQL to at most `points` buckets.

    Records are bucketed by their position, and each bucket keeps its min and max as
    well as its mean, so a single spike stays visible however far the series shrinks.
    Usually one pass over the file's rows: the bucket width comes from the first and
    last positions, which the (file, index) index answers without reading the rows.
    A metric present in only part of the file is bucketed again over that part.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    records = MetricRecord.objects.filter(file=file)
    if server:
        records = records.filter(server=server)
    bounds = records.aggregate(first=Min("index"), last=Max("index"))
    values = records.filter(**{f"{metric}__isnull": False})
    buckets = []
    if bounds["first"] is not None:
        buckets = _buckets(values, metric, bounds["first"], bounds["last"], points)
    if buckets:
        first, last = buckets[0]["first"], buckets[-1]["last"]
        narrower = (first, last) != (bounds["first"], bounds["last"])
        if narrower and _bucket_count(first, last, points) > len(buckets):
            buckets = _buckets(
                values.filter(index__range=(first, last)), metric, first, last, points
            )
    total = sum(bucket["count"] for bucket in buckets)
    rule = AnomalyRule.objects.filter(metric=metric, enabled=True).first()
    return {
        "metric": metric,
        "server": server,
        "record_count": total,
        "points": len(buckets),
        "rule": {"min": rule.min_value, "max": rule.max_value} if rule else None,
        "series": [
            {k: b[k] for k in ("start", "end", "min", "max", "mean", "count")}
            for b in buckets
        ],
    }


def _bucket_width(first: int, last: int, points: int) -> int:
    """Positions per bucket for first..last in at most `points` buckets."""
    return -(-(last - first + 1) // points)  # ceil(span / points)


def _bucket_count(first: int, last: int, points: int) -> int:
    """How many buckets positions first..last make at most `points` of."""
    return -(-(last - first + 1) // _bucket_width(first, last, points))


def _buckets(
    values: QuerySet[MetricRecord], metric: str, first: int, last: int, points: int
) -> list[dict[str, Any]]:
    """Positions first..last in at most `points` buckets of equal width.

    The mean is a float average first. Values beyond about 1e154 overflow it
    (PostgreSQL's avg() squares them; SQLite's sum reaches infinity), and then the
    buckets are computed again with a mean that cannot overflow.
    """
    try:
        with transaction.atomic():
            buckets = _bucket_query(values, metric, first, last, points, Avg(metric))
        if all(math.isfinite(b["mean"]) for b in buckets):
            return buckets
    except DataError:
        pass
    buckets = _bucket_query(values, metric, first, last, points, _WideAvg(F(metric)))
    for bucket in buckets:
        bucket["mean"] = float(bucket["mean"])
    return buckets


class _WideAvg(Aggregate):
    """The average of float values whose sum or squares overflow a double.

    PostgreSQL averages them as numeric (a decimal, made a float in Python: its
    own cast refuses subnormal results); elsewhere they are scaled down first
    (only values far below 1 lose precision, and only in a bucket this extreme).
    """

    function = "AVG"
    template = "AVG(%(expressions)s * 1e-300) * 1e300"
    output_field = DecimalField()

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(
            compiler,
            connection,
            template="AVG(CAST(%(expressions)s AS numeric))",
            **extra_context,
        )


def _bucket_query(
    values: QuerySet[MetricRecord],
    metric: str,
    first: int,
    last: int,
    points: int,
    mean: Aggregate,
) -> list[dict[str, Any]]:
    width = _bucket_width(first, last, points)
    return list(
        values.annotate(bucket=Cast((F("index") - first) / width, IntegerField()))
        .values("bucket")
        .annotate(
            start=Min("timestamp"),
            end=Max("timestamp"),
            min=Min(metric),
            max=Max(metric),
            mean=mean,
            count=Count("index"),
            first=Min("index"),
            last=Max("index"),
        )
        .order_by("bucket")
    )


def file_search(
    *,
    user: AbstractBaseUser,
    status: str = "",
    kind: str = "",
    query: str = "",
) -> QuerySet[File]:
    """The user's files, newest first, narrowed by status, kind and a name search.

    Empty or unknown values narrow nothing, so a stale link still shows files.
    """
    files = file_list(user=user)
    if status in File.Status.values:
        files = files.filter(status=status)
    if kind in File.Kind.values:
        files = files.filter(kind=kind)
    if query.strip():
        files = files.filter(name__icontains=query.strip())
    return files


ANOMALY_SORTS = {
    "record": ("record_index", "id"),
    "server": ("server", "record_index", "id"),
    "timestamp": ("timestamp", "record_index", "id"),
    "metric": ("metric", "record_index", "id"),
    "value": ("value", "record_index", "id"),
}


def anomaly_list_sorted(*, file: File, sort: str = "") -> tuple[QuerySet[Anomaly], str]:
    """The file's anomalies ordered by `sort` (a key of ANOMALY_SORTS, `-` for
    descending), and the sort applied: an unknown one falls back to record order."""
    key = sort.removeprefix("-")
    if key not in ANOMALY_SORTS:
        return anomaly_list(file=file).order_by(*ANOMALY_SORTS["record"]), "record"
    descending = sort.startswith("-")
    fields = [f"-{f}" if descending else f for f in ANOMALY_SORTS[key]]
    return anomaly_list(file=file).order_by(*fields), sort


SEED_RECORD_LIMIT = 500


def metric_record_sample(
    *, file: File, limit: int = SEED_RECORD_LIMIT
) -> list[dict[str, Any]]:
    """At most `limit` of the file's records, evenly spread, anomalous ones preferred.

    The positions are cut into at most `limit` buckets of equal width, and each
    bucket is represented by its first anomalous record, else by its first record:
    a single spike anywhere stays in the selection. In SQL, reading only the chosen
    rows: the bounds from the (file, index) index, one GROUP BY over the file's
    anomalies and, when invalid records left gaps in the positions, one over its
    records (PostgreSQL, a million records and 113,000 anomalies: 28 ms without
    gaps, 160 ms with them).
    """
    records = MetricRecord.objects.filter(file=file)
    bounds = records.aggregate(first=Min("index"), last=Max("index"))
    first, last = bounds["first"], bounds["last"]
    if first is None:
        return []
    width = _bucket_width(first, last, limit)
    if width > 1:
        if file.invalid_record_count:
            picks = _first_per_bucket(records, "index", first, width)
        else:  # every position holds a record: each bucket starts with one
            picks = dict(enumerate(range(first, last + 1, width)))
        anomalies = Anomaly.objects.filter(file=file)
        picks.update(_first_per_bucket(anomalies, "record_index", first, width))
        records = records.filter(index__in=picks.values())
    return list(records.order_by("index").values("timestamp", *METRICS))


def _first_per_bucket(
    rows: QuerySet, position: str, first: int, width: int
) -> dict[int, int]:
    """Bucket number to the first position in it, for positions from `first` on."""
    bucket = Cast((F(position) - first) / width, IntegerField())
    return dict(
        rows.order_by()  # the models' orderings would join the file to every row
        .annotate(bucket=bucket)
        .values("bucket")
        .annotate(pick=Min(position))
        .values_list("bucket", "pick")
    )
