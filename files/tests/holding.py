"""A Celery app for race tests: its worker holds every run at each batch boundary.

Started as `celery -A files.tests.holding worker` with DWELLFI_HOLD_DIR set. Before
storing batch N+1 of a file's generation G the run touches `held-<file>-<G>-<N>`
in that folder and waits until `go-<file>-<G>-<N>` or `run` exists there, so a
test can fire a competing request at an exact point of a run, then let it go on.
DWELLFI_TEST_BATCH_SIZE makes batches small, so a small file has many boundaries.
"""

import os
import time
from pathlib import Path

from dwellfi.celery import app
from files import engine
from files.signals import batch_boundary

__all__ = ["app"]

HOLD_DIR = Path(os.environ["DWELLFI_HOLD_DIR"])
HOLD_TIMEOUT = 120
engine.BATCH_SIZE = int(os.environ.get("DWELLFI_TEST_BATCH_SIZE", engine.BATCH_SIZE))


def _hold(sender, *, file_id: int, generation: int, batch: int, **kwargs) -> None:
    name = f"{file_id}-{generation}-{batch}"
    (HOLD_DIR / f"held-{name}").touch()
    go, run = HOLD_DIR / f"go-{name}", HOLD_DIR / "run"
    deadline = time.monotonic() + HOLD_TIMEOUT
    while not (go.exists() or run.exists()) and time.monotonic() < deadline:
        time.sleep(0.005)


batch_boundary.connect(_hold, weak=False)
