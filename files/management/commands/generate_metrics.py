"""`manage.py generate_metrics OUT`: deterministic server-metrics files of a given size.

The output has the seed system's format (server objects with a `metrics` array),
streamed to disk record by record so memory stays flat whatever the size. The same
arguments always give the same bytes.
"""

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from django.core.management.base import BaseCommand, CommandError

from files.engine import DEFAULT_RULES, METRICS

START = datetime(2024, 9, 19, 10, 0, tzinfo=UTC)
RANGES = {rule.metric: (rule.low, rule.high) for rule in DEFAULT_RULES}
INVALID_SHAPES = (
    ("cpu_usage", "high"),
    ("memory_usage", None),
    ("disk_read", True),
    ("timestamp", "yesterday"),
    ("network_in", [1, 2]),
)


def parse_size(text: str) -> int:
    """`110MB`, `200MiB`, `10KB`, `5000` (bytes) as a number of bytes."""
    units = {
        "kib": 1024,
        "mib": 1024**2,
        "gib": 1024**3,
        "kb": 1000,
        "mb": 1000**2,
        "gb": 1000**3,
        "b": 1,
    }
    lowered = text.strip().lower()
    for unit, factor in units.items():
        if lowered.endswith(unit):
            return int(float(lowered[: -len(unit)]) * factor)
    return int(lowered)


def write_metrics(
    out: TextIO,
    *,
    size: int,
    servers: int,
    anomaly_share: float,
    invalid_share: float,
    seed: int,
) -> int:
    """Write records until the document reaches `size` bytes; return how many."""
    rng = random.Random(seed)
    per_server = None
    written = count = 0

    def emit(text: str) -> None:
        nonlocal written
        out.write(text)
        written += len(text)

    emit("[\n" if servers > 1 else "")
    for server in range(servers):
        emit(
            f'{{"server_id": "server_{server:03d}", '
            f'"server_name": "web-server-{server:02d}",'
            f' "location": "data-center-{server % 4 + 1}",\n "metrics": [\n'
        )
        index = 0
        while True:
            if per_server is not None and index >= per_server:
                break
            if per_server is None and written >= size / servers * (server + 1):
                break
            emit(
                ("," if index else "")
                + _record(rng, index, anomaly_share, invalid_share)
            )
            index += 1
        count += index
        if per_server is None and servers > 1:
            per_server = index
        emit("\n ]}" + (",\n" if server < servers - 1 else "\n"))
    emit("]\n" if servers > 1 else "")
    return count


def _record(
    rng: random.Random, index: int, anomaly_share: float, invalid_share: float
) -> str:
    moment = (START + timedelta(seconds=index)).strftime("%Y-%m-%dT%H:%M:%SZ")
    values: dict[str, object] = {"timestamp": moment}
    for metric in METRICS:
        low, high = RANGES[metric]
        values[metric] = round(rng.uniform(low, high), 1)
    if rng.random() < anomaly_share:
        metric = rng.choice(METRICS)
        values[metric] = round(RANGES[metric][1] * rng.uniform(1.1, 3.0), 1)
    if rng.random() < invalid_share:
        key, bad = rng.choice(INVALID_SHAPES)
        values[key] = bad
    parts = ", ".join(f'"{key}": {_json(value)}' for key, value in values.items())
    return f"\n  {{{parts}}}"


def _json(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value)


class Command(BaseCommand):
    help = "Write a deterministic server-metrics JSON file of about the given size."

    def add_arguments(self, parser) -> None:
        parser.add_argument("out", type=Path, help="the file to write")
        parser.add_argument("--size", default="1MB", help="e.g. 10KB, 110MB, 200MiB")
        parser.add_argument("--servers", type=int, default=1)
        parser.add_argument(
            "--anomalies",
            type=float,
            default=0.05,
            help="share of records with one metric out of range (0..1)",
        )
        parser.add_argument(
            "--invalid",
            type=float,
            default=0.0,
            help="share of records with a wrong shape (0..1)",
        )
        parser.add_argument("--seed", type=int, default=1)

    def handle(
        self,
        *args,
        out: Path,
        size: str,
        servers: int,
        anomalies: float,
        invalid: float,
        seed: int,
        **options,
    ) -> None:
        if not (0 <= anomalies <= 1 and 0 <= invalid <= 1) or servers < 1:
            raise CommandError("shares must be within 0..1 and --servers at least 1")
        with out.open("w", encoding="utf-8") as handle:
            records = write_metrics(
                handle,
                size=parse_size(size),
                servers=servers,
                anomaly_share=anomalies,
                invalid_share=invalid,
                seed=seed,
            )
        self.stdout.write(f"{out}: {records} records, {out.stat().st_size} bytes")
