"""`make bench ARGS="--only forms"`: the large file as a document, gzip, JSON Lines
and gzip JSON Lines, each processed by the worker in the same run.

The JSON Lines file holds the document's records, one a line, each with its
server's `server_id`; the gzip files are the two texts compressed at level 6
(gzip's default). Each form's rate is records/s from `file.processing` to
`file.processed`, the median of `--repeat` rounds that upload the four forms one
after another, each round starting with the next form; the document's rate is
the baseline of the others.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import ijson

from bench.common import MB, Row, processed

if TYPE_CHECKING:
    from bench.run import Context

# The form, its file's name (the name says JSON Lines), what the row calls it.
FORMS = (
    ("document", "large.json", "JSON document"),
    ("gzip", "large.json.gz", "gzip document"),
    ("lines", "large.jsonl", "JSON Lines"),
    ("gzip lines", "large.jsonl.gz", "gzip JSON Lines"),
)
# The slowest a form may be against the document.
TARGET = 0.8


def write_lines(document: Path, out: Path) -> None:
    """The records of a one-server document (generate_metrics), one a line."""
    with document.open("rb") as source:
        server_id = next(ijson.items(source, "server_id"))
    prefix = json.dumps({"server_id": server_id})[:-1] + ", "
    with document.open("rb") as source, out.open("w") as lines:
        for record in ijson.items(source, "metrics.item", use_float=True):
            text = json.dumps(record)
            lines.write(prefix + text[1:] if text.startswith("{") else text)
            lines.write("\n")


def write_gzip(text: Path, out: Path) -> None:
    with text.open("rb") as source, gzip.open(out, "wb", compresslevel=6) as target:
        shutil.copyfileobj(source, target, 1024 * 1024)


def prepare(ctx: Context) -> dict[str, Path]:
    """The four files, made once in the run's folder."""
    document = ctx.file("large")
    paths = {form: ctx.data_dir / name for form, name, _ in FORMS}
    paths["document"] = document
    if not paths["lines"].exists():
        write_lines(document, paths["lines"])
    for plain, packed in (("document", "gzip"), ("lines", "gzip lines")):
        if not paths[packed].exists():
            write_gzip(paths[plain], paths[packed])
    return paths


async def forms(ctx: Context) -> list[Row]:
    paths = await asyncio.to_thread(prepare, ctx)
    rates: dict[str, list[float]] = {form: [] for form, _, _ in FORMS}
    counts: dict[str, int] = {}
    for round_ in range(ctx.sizes.repeat):
        # Each round starts with the next form: the records table grows with
        # every upload, and no form should always come last.
        shift = round_ % len(FORMS)
        for form, name, _ in FORMS[shift:] + FORMS[:shift]:
            file_id = await ctx.api.upload(paths[form], name=name)
            started = await ctx.events.wait((file_id, "file.processing"), 900)
            ended = await processed(ctx.events, file_id)
            detail = await ctx.api.detail(file_id)
            counts[form] = detail["record_count"] + detail["invalid_record_count"]
            rates[form].append(detail["record_count"] / (ended - started))
    document = statistics.median(rates["document"])
    ctx.notes.append(
        "forms: runs (records/s): "
        + ", ".join(f"{f} {[round(r) for r in v]}" for f, v in rates.items())
        + "; sizes (MB): "
        + ", ".join(f"{f} {paths[f].stat().st_size / MB:.1f}" for f in paths)
    )
    rows = [
        Row(
            f"Forms: JSON document ({paths['document'].stat().st_size / MB:.0f} MB, "
            f"{counts['document']:,} records)",
            f"{document:,.0f} records/s",
            "(the baseline of the rows below)",
            "1.00×",
            "",
            True,
        )
    ]
    for form, _, label in FORMS[1:]:
        rate = statistics.median(rates[form])
        size = paths[form].stat().st_size / MB
        rows.append(
            Row(
                f"Forms: {label} ({size:.0f} MB, {counts[form]:,} records)",
                f"{rate:,.0f} records/s",
                f"the JSON document, same run: {document:,.0f} records/s",
                f"{rate / document:.2f}×",
                f"≥ {TARGET}×",
                rate / document >= TARGET and counts[form] == counts["document"],
            )
        )
    return rows
