"""What a file's records add up to: per-metric statistics, the time span, the text.

Pure Python, like the engine that folds its batches in here.
"""

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

# Finite doubles can add up to more than a double holds (1e308 + 1e308): such a
# metric's sum is kept scaled down by 2**-600, far from both ends of the range.
_SUM_SCALE = 600


class MetricStats:
    """Per-metric min/max/sum/count and the time span, folded batch by batch.

    A batch is a list of records shaped like `engine.Record`: the timestamp at
    position 2, the metric values (None where absent) at position 3.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        # Per metric slot: [min, max, sum, count, scaled], None until seen; the sum
        # is of the values times 2**-_SUM_SCALE once it is `scaled`.
        self.slots: list[list[Any] | None] = [None] * len(self.names)
        self.first: datetime | None = None
        self.last: datetime | None = None

    def fold(self, records: list) -> None:
        """Fold a batch into the statistics."""
        stamps = [record[2] for record in records]
        earliest, latest = min(stamps), max(stamps)
        if self.first is None or earliest < self.first:
            self.first = earliest
        if self.last is None or latest > self.last:
            self.last = latest
        columns = zip(*[record[3] for record in records], strict=True)
        for slot, column in enumerate(columns):
            present = [number for number in column if number is not None]
            if not present:
                continue
            stats = self.slots[slot]
            if stats is None:
                stats = self.slots[slot] = [present[0], present[0], 0.0, 0, False]
            stats[0] = min(stats[0], *present)
            stats[1] = max(stats[1], *present)
            stats[3] += len(present)
            if not stats[4]:
                try:
                    total = stats[2] + math.fsum(present)
                except OverflowError:
                    total = math.inf
                if not math.isinf(total):
                    stats[2] = total
                    continue
                # Finite doubles whose sum is not: from here on sum them scaled.
                stats[2], stats[4] = math.ldexp(stats[2], -_SUM_SCALE), True
            stats[2] += math.fsum([math.ldexp(n, -_SUM_SCALE) for n in present])

    def summary(self) -> dict[str, Any]:
        """The time span and, per metric seen, its min, max, mean and count."""
        metrics = {}
        for name, stats in zip(self.names, self.slots, strict=True):
            if stats is not None:
                low, high, total, count, scaled = stats
                mean = (
                    math.ldexp(total / count, _SUM_SCALE) if scaled else total / count
                )
                metrics[name] = {
                    "min": low,
                    "max": high,
                    # Rounding cannot take the mean outside the values' range.
                    "mean": min(max(mean, low), high),
                    "count": count,
                }
        return {
            "first_timestamp": None if self.first is None else iso(self.first),
            "last_timestamp": None if self.last is None else iso(self.last),
            "metrics": metrics,
        }


def iso(moment: datetime) -> str:
    """An ISO 8601 UTC timestamp with a Z, microseconds only when present."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat() + "Z"


def number_text(value: float) -> str:
    """A number as people write it: no trailing .0 on integral floats."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def anomaly_text(
    anomalies: Iterable[Any], limit: int = 20, total: int | None = None
) -> str:
    """Anomalies as one line: "cpu_usage out of range: 800 at 2024-...Z, ...".

    Takes `Anomaly` tuples or any objects with `metric`, `value` and
    `timestamp`. At most `limit` are listed; when `total` (default: how many
    were given) is larger, ", ... and N more" follows.
    """
    items = []
    given = 0
    for anomaly in anomalies:
        given += 1
        if given <= limit:
            items.append(
                f"{anomaly.metric} out of range: {number_text(anomaly.value)} "
                f"at {iso(anomaly.timestamp)}"
            )
    more = (given if total is None else total) - len(items)
    if more > 0:
        items.append(f"... and {more} more")
    return ", ".join(items)
