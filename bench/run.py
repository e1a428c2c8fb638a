"""`make bench`: DwellFi's benchmarks, each beside a baseline measured in the same run.

Runs against the PostgreSQL in DATABASE_URL and the Redis in REDIS_URL (default:
the local servers, database `dwellfi_bench`, created when missing, and Redis
database 15), starts its own daphne and Celery worker with production settings,
generates its own data in a temporary folder, and prints a markdown table:

* large-file throughput: a ~110 MB, ~600,000-record file uploaded and processed
  by the worker, from its `file.processing` event to its `file.processed` event,
  against the floor (`ijson.items` into one text COPY into a bare table: a
  bigserial key, no foreign key, no index, no checks), the same pipeline into
  DwellFi's own records table, and a naive pipeline (`json.load` +
  `bulk_create`), each in a process of its own on the same file;
* worker memory: the peak RSS of the worker process that processed a 1 MB file,
  then of a fresh one that processed a 200 MB file;
* fairness: 10 KB uploads while two 200 MB files are processing, from the HTTP 201
  to `file.processed`, with the workers of `make run` (a small-file worker and a
  large-file one), against the same uploads with nothing else running;
* chart query: `GET /api/files/{id}/metrics/` on that 200 MB file (a million
  records), against one SQL pass over the file's rows;
* small-file latency: uploads of a 10 KB file one after another, from the HTTP 201
  to `file.processed` on a WebSocket, against the floor: a no-op Celery task that
  sends one channel-layer message, from `send_task` to the WebSocket;
* small-file throughput: concurrent uploads for 60 s, files processed end to end
  per second, every `file.processed` delivered, against the same no-op task sent
  as fast as the worker takes it.
* forms (`bench/forms.py`): the large file as a gzip document, JSON Lines and
  gzip JSON Lines, each against the document in the same run.

    make bench                      # the whole run, about 10 minutes
    make bench ARGS="--quick"       # smaller files, fewer uploads: a smoke run

Large-file figures are medians of `--repeat` runs. Timing starts only once
everything is warm; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    MB,
    QUEUES,
    QUICK,
    Api,
    Events,
    Published,
    Row,
    Sizes,
    baseline,
    bench_env,
    bench_user,
    child_peak_rss,
    ensure_database,
    generate,
    placeholder_file,
    processed,
    quantile,
)
from bench.forms import forms
from bench.stack import Stack, free_port, manage


async def large_file(ctx: Context) -> list[Row]:
    path = ctx.file("large")
    runs: dict[str, list[float]] = {"ours": [], "bare": [], "floor": []}
    baseline_files = {
        kind: placeholder_file(ctx.user_id, kind) for kind in ("bare", "floor", "naive")
    }

    async def run_baseline(kind: str) -> float:
        return await asyncio.to_thread(
            baseline, ctx.env, kind, path, baseline_files[kind]
        )

    for _ in range(ctx.sizes.repeat):
        file_id = await ctx.api.upload(path)
        started = await ctx.events.wait((file_id, "file.processing"), 900)
        ended = await processed(ctx.events, file_id)
        records = (await ctx.api.detail(file_id))["record_count"]
        runs["ours"].append(records / (ended - started))
        for kind in ("bare", "floor"):
            runs[kind].append(await run_baseline(kind))
    runs["naive"] = [await run_baseline("naive")]
    rate, bare, floor, naive = (
        statistics.median(runs[kind]) for kind in ("ours", "bare", "floor", "naive")
    )
    size = path.stat().st_size / MB
    ctx.notes.append(
        f"large file: {size:.0f} MB, {records:,} records; runs (records/s): "
        + ", ".join(
            f"{kind} {[round(r) for r in values]}" for kind, values in runs.items()
        )
    )
    return [
        Row(
            f"Large-file throughput ({size:.0f} MB, {records:,} records)",
            f"{rate:,.0f} records/s",
            f"floor: ijson.items → COPY into a bare table, {bare:,.0f} records/s",
            f"{rate / bare:.2f}×",
            "≥ 1.2×",
            rate / bare >= 1.2,
        ),
        Row(
            "",
            "",
            f"the same into DwellFi's records table: {floor:,.0f} records/s",
            f"{rate / floor:.2f}×",
            "(for comparison)",
            True,
        ),
        Row(
            "",
            "",
            f"naive: json.load → bulk_create, {naive:,.0f} records/s",
            f"{rate / naive:.1f}×",
            "≥ 4×",
            rate / naive >= 4,
        ),
    ]


async def memory(ctx: Context) -> list[Row]:
    peaks = {}
    await asyncio.to_thread(ctx.stack.stop, "worker", "worker-large")
    for name in ("memory_small", "memory_large"):
        # One fresh worker of both queues: each file on a process of its own.
        worker = await asyncio.to_thread(
            ctx.stack.start_worker, "worker", ctx.env, 1, "-Q", QUEUES
        )
        file_id = await ctx.api.upload(ctx.file(name))
        await processed(ctx.events, file_id)
        peaks[name] = child_peak_rss(worker.pid)
        ctx.memory_file = file_id
        await asyncio.to_thread(ctx.stack.stop, "worker")
    await asyncio.to_thread(ctx.start_worker)
    small, large = peaks["memory_small"] / MB, peaks["memory_large"] / MB
    size = ctx.file("memory_large").stat().st_size / MB
    return [
        Row(
            f"Worker peak RSS, {size:.0f} MB file",
            f"{large:.0f} MB",
            f"1 MB file: {small:.0f} MB",
            f"+{large - small:.0f} MB",
            "≤ +100 MB",
            large - small <= 100,
        )
    ]


async def fairness(ctx: Context, uploads: int = 5) -> list[Row]:
    data = ctx.file("small").read_bytes()

    async def latencies() -> list[float]:
        took = []
        for _ in range(uploads):
            file_id = await ctx.api.upload(data=data)
            accepted = time.perf_counter()
            took.append(await processed(ctx.events, file_id, 60) - accepted)
        return took

    idle = await latencies()
    content = ctx.file("memory_large").read_bytes()
    # Both made at once, by their last chunks: one uploaded after the other (or
    # both in one request each, which take seconds) would find the first done.
    held = [await ctx.api.resumable(content) for _ in range(2)]
    large = await asyncio.gather(*(upload.finish() for upload in held))
    del content, held
    await ctx.events.wait((large[0], "file.processing"), 600)
    busy = await latencies()
    still = [f for f in large if (f, "file.processed") not in ctx.events.arrived]
    for file_id in large:
        await processed(ctx.events, file_id)
    worst, quiet = max(busy), statistics.median(idle)
    size = ctx.file("memory_large").stat().st_size / MB
    ctx.notes.append(
        f"fairness: 10 KB latencies (s) idle {[round(t, 3) for t in idle]}, while "
        f"two {size:.0f} MB files processed {[round(t, 3) for t in busy]}; "
        f"{len(still)} of the two still unfinished after the last small one"
    )
    return [
        Row(
            f"10 KB file while two {size:.0f} MB files process, worst of {uploads}",
            f"{worst * 1000:.0f} ms",
            f"nothing else running, median: {quiet * 1000:.0f} ms",
            f"{worst / quiet:.1f}×",
            "≤ 3 s",
            worst <= 3 and len(still) == 2,
        )
    ]


async def chart_query(ctx: Context) -> list[Row]:
    from django.db import connection

    file_id = ctx.memory_file
    records = (await ctx.api.detail(file_id))["record_count"]
    url = f"/api/files/{file_id}/metrics/?metric=cpu_usage&points=500"
    endpoint, scan = [], []
    for _ in range(5):
        began = time.perf_counter()
        response = await ctx.api.http.get(url)
        endpoint.append(time.perf_counter() - began)
        response.raise_for_status()
        began = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), min(cpu_usage), max(cpu_usage) "
                "FROM files_metricrecord WHERE file_id = %s",
                [file_id],
            )
        scan.append(time.perf_counter() - began)
    took, floor = statistics.median(endpoint), statistics.median(scan)
    return [
        Row(
            f"Chart query, {records:,} records, 500 points",
            f"{took * 1000:.0f} ms",
            f"one SQL pass over the rows: {floor * 1000:.0f} ms",
            f"{took / floor:.1f}×",
            "< 1 s",
            took < 1,
        )
    ]


# Each round trip of the latency benchmark starts with the stack idle: the previous
# one's tail (the worker acking its task, daphne writing the 201) is not the next
# one's cost.
SETTLE_SECONDS = 0.02


async def small_latency(ctx: Context) -> list[Row]:
    data = ctx.file("small").read_bytes()

    async def upload() -> float:
        file_id = await ctx.api.upload(data=data)
        accepted = time.perf_counter()
        return await processed(ctx.events, file_id, 60) - accepted

    async def ping(n: int) -> float:
        sent = time.perf_counter()
        ctx.send("bench.ping", ctx.user_id, n)
        return await ctx.events.wait(("bench.ping", n), 30) - sent

    async def publish(n: int) -> float:
        sent = time.perf_counter()
        ctx.send("bench.publish", ctx.bare.channel, n)
        return await ctx.bare.wait((n,), 30) - sent

    for n in range(-10, 0):  # warm every path up
        for measure, arg in ((upload, ()), (ping, (n,)), (publish, (n,))):
            await measure(*arg)
    ours, floor, bare = [], [], []
    for n in range(ctx.sizes.latency_uploads):
        for figures, measure, arg in (
            (ours, upload, ()),
            (floor, ping, (n,)),
            (bare, publish, (n,)),
        ):
            await asyncio.sleep(SETTLE_SECONDS)
            figures.append(await measure(*arg))
    p50, p95 = (quantile(ours, q) * 1000 for q in (0.5, 0.95))
    f50, f95 = (quantile(floor, q) * 1000 for q in (0.5, 0.95))
    b50, b95 = (quantile(bare, q) * 1000 for q in (0.5, 0.95))
    count = ctx.sizes.latency_uploads
    early = sum(1 for delay in ours if delay < 0)
    ctx.notes.append(
        f"small-file latency: {early} of {count} outcomes arrived before the "
        "upload's 201 (counted as they are, negative); floor p95 "
        f"{f95:.1f} ms against the bare p95 {b95:.1f} ms ({f95 / b95:.1f}×)"
    )
    return [
        Row(
            "Floor: no-op task + group_send to a WebSocket, p50",
            f"{f50:.1f} ms",
            f"bare: no-op task + Redis PUBLISH to a subscriber: {b50:.1f} ms",
            f"{f50 / b50:.1f}×",
            "≤ 2.5×",
            f50 / b50 <= 2.5,
        ),
        Row(
            f"Small-file latency, p50 ({count} uploads of 10 KB)",
            f"{p50:.1f} ms",
            f"the floor: {f50:.1f} ms",
            f"{p50 / f50:.1f}×",
            "≤ 50 ms, ≤ 3×",
            p50 <= 50 and p50 / f50 <= 3,
        ),
        Row(
            "Small-file latency, p95",
            f"{p95:.1f} ms",
            f"the floor: {f95:.1f} ms",
            f"{p95 / f95:.1f}×",
            "≤ 150 ms, ≤ 4×",
            p95 <= 150 and p95 / f95 <= 4,
        ),
    ]


async def small_throughput(ctx: Context, uploaders: int = 6) -> list[Row]:
    data = ctx.file("small").read_bytes()
    uploaded: list[int] = []
    seconds = ctx.sizes.throughput_seconds
    began = time.perf_counter()

    async def uploader() -> None:
        while time.perf_counter() - began < seconds:
            uploaded.append(await ctx.api.upload(data=data))

    await asyncio.gather(*(uploader() for _ in range(uploaders)))
    ends = await asyncio.gather(*(processed(ctx.events, f, 600) for f in uploaded))
    rate = len(uploaded) / (max(ends) - began)
    from files.models import File

    stored = File.objects.filter(pk__in=uploaded, status="processed").count()
    delivered = stored == len(uploaded)  # every file.processed arrived (awaited)

    # The floor: the same number of no-op tasks, sent as fast as the client can
    # (from a thread: the listener stamps each arrival as it comes meanwhile).
    count = len(uploaded)
    offset = 1_000_000

    def send_all() -> None:
        for n in range(count):
            ctx.send("bench.ping", ctx.user_id, offset + n)

    began = time.perf_counter()
    await asyncio.to_thread(send_all)
    arrivals = await asyncio.gather(
        *(ctx.events.wait(("bench.ping", offset + n), 300) for n in range(count))
    )
    floor_rate = count / (max(arrivals) - began)
    return [
        Row(
            f"Small-file throughput ({seconds:.0f} s, {uploaders} uploaders)",
            f"{rate:.1f} files/s ({len(uploaded)} files, {stored} processed)",
            f"the floor, sent back to back: {floor_rate:.0f} tasks/s",
            f"{rate / floor_rate:.2f}×",
            "≥ 30 files/s, ≥ 0.45×, all delivered",
            rate >= 30 and rate / floor_rate >= 0.45 and delivered,
        )
    ]


@dataclass
class Context:
    env: dict[str, str]
    sizes: Sizes
    stack: Stack
    api: Api
    events: Events
    data_dir: Path
    user_id: int
    token: str
    notes: list[str]
    memory_file: int = 0
    bare: Published | None = None
    producer: Any = None

    def send(self, name: str, *args: Any) -> None:
        """Send a task on one held producer: the client's cost is one PUBLISH."""
        from celery import current_app

        if self.producer is None:
            self.producer = current_app.producer_pool.acquire(block=True)
        current_app.send_task(name, args=list(args), producer=self.producer)

    def file(self, name: str) -> Path:
        """A generated metrics file of the size `Sizes` gives `name`, made once."""
        path = self.data_dir / f"{name}.json"
        if not path.exists():
            print(f"... generating {name}", file=sys.stderr, flush=True)
            generate(self.env, self.data_dir, name, getattr(self.sizes, name))
        return path

    def start_worker(self) -> None:
        """The workers of `make run`: small files and large ones apart (Procfile)."""
        self.stack.start_worker(
            "worker", self.env, 2, "-I", "bench.tasks", "-Q", "celery"
        )
        self.stack.start_worker("worker-large", self.env, 1, "-Q", "large")


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    return (
        f"{os.cpu_count()} × {cpu}, {memory:.0f} GiB; Python "
        f"{platform.python_version()}, PostgreSQL {server}"
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| figure | DwellFi | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "yes" if row.met else "**no**"
        lines.append(
            f"| {row.figure} | {row.value} | {row.baseline} | {row.ratio} | "
            f"{row.target} | {met} |"
        )
    return "\n".join(lines)


async def run(ctx: Context, only: set[str]) -> list[Row]:
    port = free_port()
    ctx.stack.start_web("web", port, ctx.env)
    ctx.start_worker()
    ctx.api = Api(port, ctx.token)
    url = f"ws://127.0.0.1:{port}/notification/events?token={ctx.token}"
    rows: list[Row] = []
    for name in BENCHMARKS:
        if not only or name in only:
            for data in DATA[name]:
                ctx.file(data)
    channel = f"bench.bare.{secrets.token_hex(8)}"
    async with (
        Events(url) as ctx.events,
        Published(ctx.env["REDIS_URL"], channel) as ctx.bare,
    ):
        for name, bench in BENCHMARKS.items():
            if not only or name in only:
                print(f"... {name}", file=sys.stderr, flush=True)
                rows += await bench(ctx)
    await ctx.api.http.aclose()
    return rows


# The generated files each benchmark reads.
DATA = {
    "large": ["large"],
    "memory": ["memory_small", "memory_large"],
    "fairness": ["small", "memory_large"],
    "chart": [],
    "latency": ["small"],
    "throughput": ["small"],
    "forms": ["large"],
}
BENCHMARKS = {
    "large": large_file,
    "memory": memory,
    "fairness": fairness,
    "chart": chart_query,
    "latency": small_latency,
    "throughput": small_throughput,
    "forms": forms,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller smoke run")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, default=[])
    parser.add_argument("--repeat", type=int, help="large-file runs (median)")
    parser.add_argument("--keep", action="store_true", help="keep logs and data")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    if args.repeat:
        sizes.repeat = args.repeat
    if "chart" in args.only and "memory" not in args.only:
        args.only.append("memory")  # the chart query reads the 200 MB file

    # Stop what was started on Ctrl-C and on SIGTERM, even when started in the
    # background (which ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="dwellfi-bench-"))
    env = bench_env(tmp)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dwellfi.settings")
    # This script blocks its event loop on the database on purpose, between
    # measurements.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"
    stack = Stack(tmp)
    try:
        ensure_database(env["DATABASE_URL"])
        manage(env, "migrate", "--noinput")
        import django

        django.setup()
        logging.getLogger("httpx").setLevel(logging.WARNING)
        user_id, token = bench_user()
        ctx = Context(env, sizes, stack, None, None, tmp, user_id, token, [])
        rows = asyncio.run(run(ctx, set(args.only)))
    finally:
        stack.stop()
        if args.keep:
            print(f"logs and data kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nMachine: {machine()}\n")
    print(table(rows))
    for note in ctx.notes:
        print(f"\n{note}")
    return 0 if all(row.met for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
