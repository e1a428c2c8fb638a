"""The large-file baselines, each run in a process of its own like a worker child.

    python -m bench.baselines floor|floor-binary|naive PATH FILE_ID

Both store every record of PATH in the records table under FILE_ID in one
transaction, as processing does, and print {"records": N, "seconds": S}:

* floor: `ijson.items` feeding psycopg COPY, no validation, no anomaly checks:
  the straightforward streaming pipeline into this table (one thread, one COPY
  in the default text format).
* floor-binary: the same with binary COPY (timestamps parsed on the client), for
  comparison.
* naive: `json.load` of the whole document, then Django `bulk_create`.
"""

import json
import os
import sys
import time
from datetime import datetime

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dwellfi.settings")
django.setup()

import ijson  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from files.engine import BATCH_SIZE, METRICS  # noqa: E402
from files.models import MetricRecord  # noqa: E402

COLUMNS = ("file_id", "index", "server", "timestamp", *METRICS)
FLOATS = ["double precision"] * len(METRICS)


def records(document: dict | list):
    """(server, record) pairs of a metrics document, either layout."""
    for server in document if isinstance(document, list) else [document]:
        for record in server["metrics"]:
            yield server.get("server_id", ""), record


def floor(path: str, file_id: int, binary: bool = False) -> int:
    names = ", ".join(connection.ops.quote_name(c) for c in COLUMNS)
    sql = f"COPY files_metricrecord ({names}) FROM STDIN"
    count = 0
    with (
        transaction.atomic(),
        connection.cursor() as cursor,
        open(path, "rb") as stream,
        cursor.cursor.copy(sql + (" (FORMAT BINARY)" if binary else "")) as copy,
    ):
        if binary:
            copy.set_types(["bigint", "integer", "text", "timestamptz"] + FLOATS)
        for record in ijson.items(stream, "metrics.item", use_float=True):
            stamp = record.get("timestamp")
            copy.write_row(
                (
                    file_id,
                    count,
                    "server",
                    datetime.fromisoformat(stamp) if binary else stamp,
                    *(record.get(m) for m in METRICS),
                )
            )
            count += 1
    return count


def floor_binary(path: str, file_id: int) -> int:
    return floor(path, file_id, binary=True)


def naive(path: str, file_id: int) -> int:
    with open(path, "rb") as stream:
        document = json.load(stream)
    rows = [
        MetricRecord(
            file_id=file_id,
            index=index,
            server=server,
            timestamp=record["timestamp"],
            **{m: record.get(m) for m in METRICS},
        )
        for index, (server, record) in enumerate(records(document))
    ]
    with transaction.atomic():
        MetricRecord.objects.bulk_create(rows, batch_size=BATCH_SIZE)
    return len(rows)


if __name__ == "__main__":
    kind, path, file_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    started = time.perf_counter()
    pipelines = {"floor": floor, "floor-binary": floor_binary, "naive": naive}
    count = pipelines[kind](path, file_id)
    print(json.dumps({"records": count, "seconds": time.perf_counter() - started}))
