"""The large-file baselines, each run in a process of its own like a worker child.

    python -m bench.baselines bare|floor|naive PATH FILE_ID

Each stores every record of PATH under FILE_ID in one transaction, as processing
does, and prints {"records": N, "seconds": S}:

* bare: `ijson.items` feeding one psycopg COPY (the default text format) into a
  table with only a bigserial primary key: no foreign key, no other index, no
  validation, no anomaly checks. The straightforward streaming pipeline, and the
  floor DwellFi is measured against. The table is made before timing starts and
  dropped after.
* floor: the same pipeline into DwellFi's own records table, so paying for its
  keys and indexes too (the floor before issue 13).
* naive: `json.load` of the whole document, then Django `bulk_create`.
"""

import json
import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dwellfi.settings")
django.setup()

import ijson  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from files.engine import BATCH_SIZE, METRICS  # noqa: E402
from files.models import MetricRecord  # noqa: E402

COLUMNS = ("file_id", "index", "server", "timestamp", *METRICS)


def records(document: dict | list):
    """(server, record) pairs of a metrics document, either layout."""
    for server in document if isinstance(document, list) else [document]:
        for record in server["metrics"]:
            yield server.get("server_id", ""), record


BARE_TABLE = "bench_bare_records"


def bare_table() -> None:
    """The bare floor's table: DwellFi's columns, a bigserial key and nothing else."""
    floats = ", ".join(f"{m} double precision" for m in METRICS)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {BARE_TABLE}")
        cursor.execute(
            f"CREATE TABLE {BARE_TABLE} (id bigserial PRIMARY KEY, file_id bigint, "
            f'"index" integer, server text, timestamp timestamptz, {floats})'
        )


def floor(path: str, file_id: int, table: str = "files_metricrecord") -> int:
    names = ", ".join(connection.ops.quote_name(c) for c in COLUMNS)
    sql = f"COPY {table} ({names}) FROM STDIN"
    count = 0
    with (
        transaction.atomic(),
        connection.cursor() as cursor,
        open(path, "rb") as stream,
        cursor.cursor.copy(sql) as copy,
    ):
        for record in ijson.items(stream, "metrics.item", use_float=True):
            copy.write_row(
                (
                    file_id,
                    count,
                    "server",
                    record.get("timestamp"),
                    *(record.get(m) for m in METRICS),
                )
            )
            count += 1
    return count


def bare(path: str, file_id: int) -> int:
    return floor(path, file_id, table=BARE_TABLE)


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
    if kind == "bare":
        bare_table()
    started = time.perf_counter()
    pipelines = {"bare": bare, "floor": floor, "naive": naive}
    count = pipelines[kind](path, file_id)
    seconds = time.perf_counter() - started
    if kind == "bare":
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {BARE_TABLE}")
    print(json.dumps({"records": count, "seconds": seconds}))
