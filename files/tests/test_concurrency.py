"""The write path under any interleaving: a hypothesis state machine.

Requests (create, replace, rename, reprocess, delete) run on the test's thread,
one after another; a worker runs in a thread of its own, one task at a time in
the order they were queued, and stops at every batch boundary until the machine
lets it take its next step. So a request can land between any two steps of a
run: its claim, each batch, its commit. After every step the machine checks what
users depend on; at the end it lets everything finish and checks the one final
state. PostgreSQL only: on SQLite a run's transaction holds the only write lock,
so no request can land inside it.
"""

import io
import threading
from collections import deque
from pathlib import Path

import pytest
from django.db import connection
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from files import dispatch, engine, leftovers, services
from files.exceptions import FileGone
from files.models import Anomaly, File, MetricRecord, PendingDeletion, RecordError
from files.signals import batch_boundary
from notifications.models import Event

from .factories import broken_bytes, metrics_bytes, upload, user_create

pytestmark = pytest.mark.django_db(transaction=True)

CONTENTS = {
    "seven": metrics_bytes(7),
    "thirteen": metrics_bytes(13),
    "some invalid": metrics_bytes(8).replace(b'"cpu_usage":40', b'"cpu_usage":"x"'),
    "plain json": b'{"a": [1, 2, {"b": null}]}',
    "broken": broken_bytes(),
    "no records": b'{"metrics": []}',
}
RESULT_MODELS = (MetricRecord, Anomaly, RecordError)


class _Counts:
    """A sink that only counts, for the expected outcome of each content."""

    def __init__(self) -> None:
        self.records = self.anomalies = self.issues = 0

    def add_records(self, batch) -> None:
        self.records += len(batch)

    def add_anomalies(self, batch) -> None:
        self.anomalies += len(batch)

    def add_issues(self, batch) -> None:
        self.issues += len(batch)

    def reset(self) -> None:
        self.records = self.anomalies = self.issues = 0


def expected_outcome(content: bytes) -> tuple[str, int, int, int]:
    """(status, records, anomalies, invalid records) that processing must end with."""
    counts = _Counts()
    try:
        engine.process(
            lambda: io.BytesIO(content),
            size=len(content),
            rules=[engine.Rule(*rule) for rule in engine.DEFAULT_RULES],
            sink=counts,
        )
    except engine.ProcessingError:
        return ("failed", 0, 0, 0)
    return ("processed", counts.records, counts.anomalies, counts.issues)


EXPECTED = {name: expected_outcome(content) for name, content in CONTENTS.items()}


class SteppedWorker:
    """One worker, as a thread: its tasks in queue order, held at batch boundaries."""

    def __init__(self) -> None:
        self.queue: deque[tuple[int, str]] = deque()
        self.thread: threading.Thread | None = None
        self.errors: list[BaseException] = []
        self._go = threading.Semaphore(0)
        self._held = threading.Event()
        self._done = threading.Event()
        batch_boundary.connect(self._boundary, weak=False)

    def close(self) -> None:
        """Stop holding: a run still going (a test failed) runs to its end."""
        batch_boundary.disconnect(self._boundary)
        if self.thread is not None:
            self._go.release(1000)
            self.thread.join(30)

    def enqueue(self, *, file_id: int, task_id: str, size: int) -> bool:
        self.queue.append((file_id, task_id))
        return True

    @property
    def busy(self) -> bool:
        return self.thread is not None

    def start_next(self) -> None:
        """Take the next task and run it up to its first boundary (or its end)."""
        file_id, task_id = self.queue.popleft()
        self._done.clear()
        self.thread = threading.Thread(
            target=self._run, args=(file_id, task_id), daemon=True
        )
        self.thread.start()
        self._settle()

    def step(self) -> None:
        """Let the run go on to its next boundary (or its end)."""
        self._go.release()
        self._settle()

    def finish(self) -> None:
        """Run everything still running or queued to its end."""
        while self.busy or self.queue:
            if self.busy:
                self.step()
            else:
                self.start_next()

    def _boundary(self, sender, **kwargs) -> None:
        if threading.current_thread() is self.thread:
            self._held.set()
            self._go.acquire()

    def _run(self, file_id: int, task_id: str) -> None:
        try:
            services.file_process(file_id=file_id, task_id=task_id)
        except BaseException as exc:  # recorded: no step may raise
            self.errors.append(exc)
        finally:
            connection.close()
            self._done.set()

    def _settle(self) -> None:
        for _ in range(1000):
            if self._done.wait(0.01):
                self.thread.join()
                self.thread = None
                break
            if self._held.is_set():
                self._held.clear()
                break
        else:
            raise AssertionError("the worker neither reached a boundary nor ended")
        assert not self.errors, self.errors


class WritePath(RuleBasedStateMachine):
    """Requests and a worker's steps in any order; the state checked after each."""

    owner = None  # set by the test
    media: Path = Path()

    def __init__(self) -> None:
        super().__init__()
        self.worker = SteppedWorker()
        self.content: dict[int, str] = {}  # each live file's current content
        self.names: dict[int, str] = {}
        self.deleted: set[int] = set()

    @initialize()
    def route_tasks_to_the_worker(self) -> None:
        dispatch.enqueue = self.worker.enqueue

    def _pick(self, index: int) -> File:
        ids = sorted([*self.content, *self.deleted])
        file_id = ids[index % len(ids)]
        # A copy as a request would have read it, at some point in the past.
        return File(pk=file_id, owner_id=self.owner.pk)

    def _change(self, file: File, change) -> bool:
        """Run a request; a deleted file must be refused as gone."""
        if file.pk in self.deleted:
            with pytest.raises(FileGone):
                change()
            return False
        change()
        return True

    @rule(content=st.sampled_from(sorted(CONTENTS)))
    def create(self, content: str) -> None:
        file = services.file_create(
            owner=self.owner, upload=upload(CONTENTS[content], f"{content}.json")
        )
        self.content[file.pk] = content
        self.names[file.pk] = f"{content}.json"

    @precondition(lambda self: self.content or self.deleted)
    @rule(index=st.integers(0, 50), content=st.sampled_from(sorted(CONTENTS)))
    def replace(self, index: int, content: str) -> None:
        file = self._pick(index)
        new = upload(CONTENTS[content], f"{content}.json")
        if self._change(
            file, lambda: services.file_update(file=file, by=self.owner, upload=new)
        ):
            self.content[file.pk] = content

    @precondition(lambda self: self.content or self.deleted)
    @rule(index=st.integers(0, 50), name=st.sampled_from(["x.json", "y.json"]))
    def rename(self, index: int, name: str) -> None:
        file = self._pick(index)
        if self._change(
            file, lambda: services.file_update(file=file, by=self.owner, name=name)
        ):
            self.names[file.pk] = name

    @precondition(lambda self: self.content or self.deleted)
    @rule(index=st.integers(0, 50))
    def reprocess(self, index: int) -> None:
        file = self._pick(index)
        self._change(file, lambda: services.file_reprocess(file=file, by=self.owner))

    @precondition(lambda self: self.content or self.deleted)
    @rule(index=st.integers(0, 50))
    def delete(self, index: int) -> None:
        file = self._pick(index)
        if self._change(file, lambda: services.file_delete(file=file)):
            del self.content[file.pk]
            self.deleted.add(file.pk)

    @precondition(lambda self: not self.worker.busy and self.worker.queue)
    @rule()
    def worker_takes_the_next_task(self) -> None:
        self.worker.start_next()

    @precondition(lambda self: self.worker.busy)
    @rule()
    def worker_goes_on(self) -> None:
        self.worker.step()

    @invariant()
    def every_outcome_is_that_of_the_current_content(self) -> None:
        files = {f.pk: f for f in File.objects.filter(owner=self.owner)}
        assert set(files) == set(self.content), "a file is missing or came back"
        for file_id, file in files.items():
            assert file.name == self.names[file_id]
            if file.is_final:
                assert_results(file, EXPECTED[self.content[file_id]])

    @invariant()
    def a_deleted_file_keeps_only_the_event_of_its_deletion(self) -> None:
        for file_id in self.deleted:
            types = Event.objects.filter(file_id=file_id).values_list("type", flat=True)
            assert list(types) == ["file.deleted"]

    def teardown(self) -> None:
        try:
            self.worker.finish()
            for pending_id in PendingDeletion.objects.values_list("pk", flat=True):
                assert leftovers.purge(pending_id)
            self.every_outcome_is_that_of_the_current_content()
            for file in File.objects.filter(owner=self.owner):
                assert file.is_final, file
            for model in RESULT_MODELS:
                stray = model.objects.exclude(file_id__in=self.content)
                assert not stray.exists(), f"{model.__name__} of a deleted file"
            stored = {p.name for p in (self.media / "uploads").iterdir()}
            assert stored == {
                Path(f.content.name).name for f in File.objects.filter(owner=self.owner)
            }
        finally:
            self.worker.close()
            for model in (*RESULT_MODELS, File, PendingDeletion, Event):
                model.objects.all().delete()
            for path in (self.media / "uploads").glob("*"):
                path.unlink()


def assert_results(file: File, expected: tuple[str, int, int, int]) -> None:
    """The file's status, counts and stored rows are exactly `expected`'s."""
    status, records, anomalies, invalid = expected
    assert file.status == status, (file, file.error)
    assert (file.record_count, file.anomaly_count, file.invalid_record_count) == (
        records,
        anomalies,
        invalid,
    )
    stored = MetricRecord.objects.filter(file_id=file.pk)
    assert stored.count() == stored.values("index").distinct().count() == records
    assert Anomaly.objects.filter(file_id=file.pk).count() == anomalies
    assert RecordError.objects.filter(file_id=file.pk).count() == invalid


@pytest.mark.parametrize("pipelined", [False, True], ids=["direct", "pipelined"])
def test_any_interleaving_of_requests_and_a_run_ends_consistent(
    rules, monkeypatch, tmp_path, pipelined, settings
):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: on SQLite a run holds the only write lock")
    settings.MEDIA_ROOT = str(tmp_path)
    # Quotas are another test's business: this one creates files without end.
    settings.DWELLFI_QUOTA_FILES = settings.DWELLFI_QUOTA_PROCESSING = 0
    (tmp_path / "uploads").mkdir()
    monkeypatch.setattr(engine, "BATCH_SIZE", 3)
    monkeypatch.setattr(services, "PIPELINE_FROM", 0 if pipelined else 10**9)
    monkeypatch.setattr(dispatch, "enqueue", dispatch.enqueue)  # restored after
    WritePath.owner = user_create()
    WritePath.media = tmp_path
    run_state_machine_as_test(
        WritePath,
        settings=hypothesis_settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.fixture
def worker(monkeypatch) -> SteppedWorker:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: on SQLite a run holds the only write lock")
    monkeypatch.setattr(engine, "BATCH_SIZE", 3)
    stepped = SteppedWorker()
    monkeypatch.setattr(dispatch, "enqueue", stepped.enqueue)
    yield stepped
    stepped.close()


def test_a_run_superseded_mid_way_stops_at_its_next_batch(user, rules, worker):
    file = services.file_create(owner=user, upload=upload(CONTENTS["thirteen"]))
    worker.start_next()  # claimed; held before its second batch
    services.file_update(file=file, by=user, upload=upload(CONTENTS["seven"]))

    worker.step()  # the check before the second batch: superseded, nothing kept
    assert not worker.busy
    file.refresh_from_db()
    assert (file.status, file.generation, file.record_count) == ("queued", 2, 0)
    assert not MetricRecord.objects.filter(file_id=file.pk).exists()

    worker.finish()
    file.refresh_from_db()
    assert_results(file, EXPECTED["seven"])
