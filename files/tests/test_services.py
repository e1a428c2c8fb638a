"""The services: storing uploads, processing, events, recovery."""

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.utils import timezone

from files import dispatch, engine, leftovers, services, sink
from files.exceptions import FileGone
from files.models import (
    Anomaly,
    AnomalyRule,
    File,
    MetricRecord,
    PendingDeletion,
    RecordError,
)
from notifications.models import Event

from .factories import (
    SERVER_4_VALUES,
    broken_bytes,
    metrics_document,
    server_4_bytes,
    upload,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def enqueued(monkeypatch) -> list[tuple[int, str]]:
    """The tasks sent to the broker, instead of sending them."""
    sent: list[tuple[int, str]] = []

    def enqueue(*, file_id: int, task_id: str, size: int) -> bool:
        sent.append((file_id, task_id))
        return True

    monkeypatch.setattr(dispatch, "enqueue", enqueue)
    return sent


def create(user, content: bytes, name: str = "metrics.json") -> File:
    return services.file_create(owner=user, upload=upload(content, name))


def process(file: File) -> File:
    file.refresh_from_db()
    result = services.file_process(file_id=file.pk, task_id=file.task_id)
    file.refresh_from_db()
    return result or file


def event_types(user) -> list[str]:
    return list(
        Event.objects.filter(user=user).order_by("seq").values_list("type", flat=True)
    )


def test_create_stores_bytes_under_a_generated_name_and_enqueues_after_commit(
    user, enqueued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        file = create(user, server_4_bytes(), name="../../etc/passwd")

    assert file.status == File.Status.QUEUED
    assert file.name == "passwd"
    assert file.size == len(server_4_bytes())
    assert Path(file.content.path).read_bytes() == server_4_bytes()
    assert "passwd" not in file.content.name and file.content.name.startswith(
        "uploads/"
    )
    assert len(file.sha256) == 64
    assert enqueued == [(file.pk, file.task_id)]
    event = Event.objects.get(user=user)
    assert (event.seq, event.type, event.message["status"]) == (
        1,
        "file.queued",
        "queued",
    )
    assert file.last_event_id == 1


def test_nothing_is_enqueued_before_commit(
    user, enqueued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        create(user, server_4_bytes())
    assert enqueued == []
    assert len(callbacks) >= 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"  \n\t ", "whitespace"),
        (b"\x89PNG\r\n\x1a\n", "not JSON"),
        (b"hello world", "not JSON"),
    ],
)
def test_uploads_that_cannot_be_json_are_refused(user, enqueued, content, message):
    with pytest.raises(services.UploadRefused) as caught:
        create(user, content)
    assert message in str(caught.value)
    assert not File.objects.exists()


def test_processing_a_metrics_file_stores_records_anomalies_and_summary(
    user, rules, enqueued
):
    file = process(create(user, server_4_bytes()))

    assert file.status == File.Status.PROCESSED
    assert file.kind == File.Kind.SERVER_METRICS
    assert (file.record_count, file.anomaly_count, file.invalid_record_count) == (
        9,
        27,
        0,
    )
    assert file.progress == 1.0 and file.attempts == 1
    assert file.started_at and file.finished_at
    assert MetricRecord.objects.filter(file=file).count() == 9
    assert Anomaly.objects.filter(file=file).count() == 27
    first = Anomaly.objects.filter(file=file).order_by("record_index", "id").first()
    assert (first.metric, first.value, first.min_value, first.max_value) == (
        "cpu_usage",
        187,
        0,
        85,
    )
    assert file.summary["servers"][0]["id"] == "server_002"
    assert file.summary["metrics"]["cpu_usage"]["max"] == 860
    assert event_types(user) == [
        "file.queued",
        "file.processing",
        "file.processed",
        "file.anomalies",
        "notification",
    ]


def test_outcome_events_carry_the_seed_fields(user, rules, enqueued):
    file = process(create(user, server_4_bytes()))
    messages = {e.type: e.message for e in Event.objects.filter(user=user)}

    processed = messages["file.processed"]
    assert processed["event_name"] == "FileProcessed" and processed["is_major"] is True
    assert processed["file"]["anomaly_count"] == 27
    assert processed["status"] == "processed" and processed["progress"] == 1.0
    anomalies = messages["file.anomalies"]
    assert anomalies["file_anomaly"]["file_id"] == file.pk
    assert anomalies["file_anomaly"]["data"].startswith(
        "cpu_usage out of range: 187 at 2024-09-19T10:00:00Z, "
    )
    assert anomalies["file_anomaly"]["data"].endswith("... and 7 more")
    notification = messages["notification"]
    assert notification["event_name"] == "Notification"
    assert notification["user_id"] == user.pk and "processed" in notification["title"]
    assert (
        file.last_event_id
        == notification["id"]
        == notification["file"]["last_event_id"]
    )


def test_malformed_file_fails_with_its_position(user, rules, enqueued):
    file = process(create(user, broken_bytes()))

    assert file.status == File.Status.FAILED
    assert (file.error["line"], file.error["column"], file.error["offset"]) == (
        13,
        20,
        198,
    )
    assert file.error["message"]
    assert not MetricRecord.objects.filter(file=file).exists()
    failed = Event.objects.get(user=user, type="file.failed").message
    assert failed["event_name"] == "FileProcessError"
    assert "line 13, column 20" in failed["file_anomaly"]["data"]
    assert event_types(user)[-1] == "notification"


def test_invalid_records_are_skipped_and_reported_with_pointers(user, rules, enqueued):
    document = metrics_document()
    document["metrics"][1]["cpu_usage"] = "high"
    del document["metrics"][2]["timestamp"]
    file = process(create(user, json.dumps(document).encode()))

    assert file.status == File.Status.PROCESSED
    assert (file.record_count, file.invalid_record_count) == (7, 2)
    pointers = list(
        RecordError.objects.filter(file=file).values_list("pointer", flat=True)
    )
    assert pointers == ["/metrics/1/cpu_usage", "/metrics/2/timestamp"]


def test_a_document_without_valid_records_fails(user, rules, enqueued):
    file = process(create(user, b'{"metrics": [{"cpu_usage": 1}]}'))
    assert file.status == File.Status.FAILED
    assert file.error["message"]


def test_any_other_json_is_processed_with_a_structural_summary(user, rules, enqueued):
    file = process(create(user, b'{"a": [1, 2, {"b": null}], "c": "d"}'))
    assert (file.status, file.kind) == (File.Status.PROCESSED, File.Kind.JSON)
    assert file.summary["top_level_type"] == "object"
    assert file.summary["key_count"] == 2
    assert file.record_count == 0


def test_processing_again_replaces_results(user, rules, enqueued):
    file = process(create(user, server_4_bytes()))
    services.file_reprocess(file=file, by=user)
    file = process(file)

    assert file.status == File.Status.PROCESSED
    assert MetricRecord.objects.filter(file=file).count() == 9
    assert Anomaly.objects.filter(file=file).count() == 27


def test_edited_rules_apply_to_the_next_processing(user, rules, enqueued):
    AnomalyRule.objects.filter(metric="cpu_usage").update(max_value=1000)
    AnomalyRule.objects.filter(metric="memory_usage").update(enabled=False)
    file = process(create(user, server_4_bytes()))
    assert not Anomaly.objects.filter(
        file=file, metric__in=["cpu_usage", "memory_usage"]
    ).exists()
    assert file.anomaly_count == 27 - 9 - 9


def test_a_stale_task_does_nothing(user, rules, enqueued):
    file = create(user, server_4_bytes())
    assert services.file_process(file_id=file.pk, task_id="another-task") is not None
    file.refresh_from_db()
    assert file.status == File.Status.QUEUED and file.attempts == 0


def test_a_duplicate_delivery_after_the_outcome_does_nothing(user, rules, enqueued):
    file = process(create(user, server_4_bytes()))
    events = Event.objects.count()
    services.file_process(file_id=file.pk, task_id=file.task_id)
    assert Event.objects.count() == events
    assert MetricRecord.objects.filter(file=file).count() == 9


def test_a_file_that_keeps_losing_its_worker_ends_failed(
    user, rules, enqueued, settings
):
    file = create(user, server_4_bytes())
    File.objects.filter(pk=file.pk).update(
        status=File.Status.PROCESSING, attempts=settings.DWELLFI_MAX_ATTEMPTS
    )
    file = process(file)
    assert file.status == File.Status.FAILED
    assert "Gave up after" in file.error["message"]


def test_update_with_new_content_requeues_and_removes_old_bytes(
    user, rules, enqueued, django_capture_on_commit_callbacks
):
    file = process(create(user, server_4_bytes()))
    old_path = Path(file.content.path)
    with django_capture_on_commit_callbacks(execute=True):
        file = services.file_update(
            file=file, by=user, upload=upload(b"[1, 2, 3]", "new.json"), name="new.json"
        )
    assert file.status == File.Status.QUEUED and file.name == "new.json"
    assert not old_path.exists()
    file = process(file)
    assert file.kind == File.Kind.JSON
    assert not MetricRecord.objects.filter(file=file).exists()


def test_delete_removes_results_bytes_and_tells_the_owner(
    user, rules, enqueued, django_capture_on_commit_callbacks
):
    file = process(create(user, server_4_bytes()))
    path, file_id = Path(file.content.path), file.pk
    with django_capture_on_commit_callbacks(execute=True):
        services.file_delete(file=file)
    assert not File.objects.filter(pk=file_id).exists()
    assert not MetricRecord.objects.filter(file_id=file_id).exists()
    assert not path.exists()
    deleted = Event.objects.get(user=user, type="file.deleted")
    assert deleted.file_id == file_id and deleted.message["event_name"] == "FileDeleted"


def test_event_ids_increase_by_one_for_each_user(user, other_user, rules, enqueued):
    create(user, server_4_bytes())
    create(other_user, server_4_bytes())
    create(user, server_4_bytes())
    assert list(Event.objects.filter(user=user).values_list("seq", flat=True)) == [1, 2]
    assert list(
        Event.objects.filter(user=other_user).values_list("seq", flat=True)
    ) == [1]


def test_recovery_requeues_stuck_files_and_fails_hopeless_ones(
    user, rules, enqueued, settings, django_capture_on_commit_callbacks
):
    stuck_queued = create(user, server_4_bytes())
    fresh = create(user, server_4_bytes())
    hopeless = create(user, server_4_bytes())
    long_ago = timezone.now() - timedelta(days=1)
    File.objects.filter(pk=stuck_queued.pk).update(updated_at=long_ago)
    File.objects.filter(pk=hopeless.pk).update(
        status=File.Status.PROCESSING,
        started_at=long_ago,
        attempts=settings.DWELLFI_MAX_ATTEMPTS,
    )
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        counts = services.files_recover_stuck()

    assert counts == {"requeued": 1, "failed": 1}
    stuck_queued.refresh_from_db()
    assert enqueued == [(stuck_queued.pk, stuck_queued.task_id)]
    hopeless.refresh_from_db()
    assert hopeless.status == File.Status.FAILED
    fresh_task = fresh.task_id
    fresh.refresh_from_db()
    assert fresh.task_id == fresh_task


# --- storing results in batches -------------------------------------------------------


@pytest.fixture
def many_batches(monkeypatch):
    """Batches of 40 records, every file pipelined: a small file takes many writes."""
    monkeypatch.setattr(engine, "BATCH_SIZE", 40)
    monkeypatch.setattr(services, "PIPELINE_FROM", 0)


def long_document(repeat: int = 50, **extra) -> bytes:
    """server_4's records `repeat` times over, a second apart."""
    document = metrics_document(SERVER_4_VALUES * repeat)
    for n, record in enumerate(document["metrics"]):
        record["timestamp"] = f"2024-09-19T10:{n // 60:02d}:{n % 60:02d}Z"
    return json.dumps({**document, **extra}).encode()


def test_a_file_of_many_batches_is_stored_exactly(user, rules, enqueued, many_batches):
    switch_interval = sys.getswitchinterval()
    file = process(create(user, long_document()))

    assert (file.status, file.record_count, file.anomaly_count) == (
        "processed",
        450,
        27 * 50,
    )
    indexes = list(
        MetricRecord.objects.filter(file=file)
        .order_by("index")
        .values_list("index", flat=True)
    )
    assert indexes == list(range(450))
    assert Anomaly.objects.filter(file=file).count() == 27 * 50
    assert sys.getswitchinterval() == switch_interval

    services.file_reprocess(file=file, by=user)
    file = process(file)
    assert MetricRecord.objects.filter(file=file).count() == 450
    assert Anomaly.objects.filter(file=file).count() == 27 * 50


def test_the_strict_pass_starts_the_results_again(user, rules, enqueued, many_batches):
    # yajl refuses an integer beyond 64 bits, at the very end: every batch of the
    # fast pass is written (or in flight) before the strict pass starts over.
    content = long_document(big=10**30)
    file = process(create(user, content))

    assert (file.status, file.record_count) == ("processed", 450)
    assert MetricRecord.objects.filter(file=file).count() == 450
    assert Anomaly.objects.filter(file=file).count() == 27 * 50


def test_a_failed_write_leaves_no_results(
    user, rules, enqueued, many_batches, monkeypatch
):
    # On PostgreSQL the COPY runs in the writer thread: its error must come back.
    real = sink.ResultSink._store
    writes = []

    def failing(self, *args):
        writes.append(args[0])
        if len(writes) == 5:
            raise RuntimeError("disk full")
        real(self, *args)

    monkeypatch.setattr(sink.ResultSink, "_store", failing)
    file = create(user, long_document())
    with pytest.raises(RuntimeError, match="disk full"):
        services.file_process(file_id=file.pk, task_id=file.task_id)

    file.refresh_from_db()
    assert file.status == "processing"  # the task's handler fails it
    assert not MetricRecord.objects.filter(file=file).exists()
    assert not Anomaly.objects.filter(file=file).exists()


# --- concurrent changes, one request at a time -------------------------------------


def test_a_rename_from_a_stale_copy_keeps_what_the_worker_wrote(user, rules, enqueued):
    file = create(user, server_4_bytes())
    stale = File.objects.get(pk=file.pk)  # as a request read it, still queued
    process(file)

    services.file_update(file=stale, by=user, name="renamed.json")

    file.refresh_from_db()
    assert (file.name, file.status, file.record_count, file.anomaly_count) == (
        "renamed.json",
        "processed",
        9,
        27,
    )
    assert file.generation == 1


def test_changing_a_deleted_file_brings_nothing_back(
    user, rules, enqueued, django_capture_on_commit_callbacks, settings
):
    file = process(create(user, server_4_bytes()))
    stale = File.objects.get(pk=file.pk)
    with django_capture_on_commit_callbacks(execute=True):
        services.file_delete(file=file)
    uploads = Path(settings.MEDIA_ROOT) / "uploads"
    before = set(uploads.iterdir())

    for change in (
        lambda: services.file_update(file=stale, by=user, upload=upload(b"[1]")),
        lambda: services.file_update(file=stale, by=user, name="back.json"),
        lambda: services.file_reprocess(file=stale, by=user),
        lambda: services.file_delete(file=stale),
    ):
        with pytest.raises(FileGone):
            change()

    assert not File.objects.filter(pk=file.pk).exists()
    assert set(uploads.iterdir()) == before  # the refused PUT kept no bytes
    assert event_types(user)[-1] == "file.deleted"


def test_a_delete_leaves_nothing_of_the_file(
    user, rules, enqueued, django_capture_on_commit_callbacks
):
    file = process(create(user, server_4_bytes()))
    invalid = process(create(user, b'{"metrics": [{"timestamp": 1}, {}]}'))
    for doomed in (file, invalid):
        with django_capture_on_commit_callbacks(execute=True):
            services.file_delete(file=doomed)

        for model in (MetricRecord, Anomaly, RecordError):
            assert not model.objects.filter(file_id=doomed.pk).exists()
        assert list(
            Event.objects.filter(file_id=doomed.pk).values_list("type", flat=True)
        ) == ["file.deleted"]
        assert not PendingDeletion.objects.exists()
        assert not Path(doomed.content.path).exists()


def test_reprocessing_a_file_still_queued_is_one_run(
    user, rules, enqueued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        file = create(user, server_4_bytes())
    events = Event.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        again = services.file_reprocess(file=file, by=user)

    assert (again.task_id, again.generation) == (file.task_id, 1)
    assert Event.objects.count() == events
    assert enqueued == [(file.pk, file.task_id)]


def test_replace_and_reprocess_start_a_new_generation(user, rules, enqueued):
    file = process(create(user, server_4_bytes()))
    old_task = file.task_id

    file = services.file_reprocess(file=file, by=user)
    assert (file.generation, file.status, file.attempts) == (2, "queued", 0)
    # The last outcome's results stay until the new run replaces them.
    assert (file.record_count, MetricRecord.objects.filter(file=file).count()) == (9, 9)
    assert services.file_process(file_id=file.pk, task_id=old_task).generation == 2

    file = services.file_update(file=file, by=user, upload=upload(b"[1]", "v3.json"))
    assert (file.generation, file.kind) == (3, None)
    file = process(file)
    assert (file.kind, file.status, file.record_count) == ("json", "processed", 0)
    assert not MetricRecord.objects.filter(file=file).exists()


@pytest.fixture
def broker(monkeypatch) -> list[str]:
    """The real `enqueue`, with the broker replaced by a list of the task ids sent."""
    sent: list[str] = []
    monkeypatch.setattr(
        dispatch.current_app,
        "send_task",
        lambda name, *, task_id, **options: sent.append(task_id),
    )
    return sent


def test_recovery_leaves_a_waiting_task_alone_and_resends_a_lost_one(
    user, rules, broker, settings, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        file = create(user, server_4_bytes())
    long_ago = timezone.now() - timedelta(seconds=settings.DWELLFI_QUEUED_GRACE_SECONDS)
    File.objects.filter(pk=file.pk).update(updated_at=long_ago)
    events = Event.objects.count()

    # The broker still holds its message (its marker is there): a long queue.
    assert services.files_recover_stuck() == {"requeued": 0, "failed": 0}
    assert broker == [file.task_id]

    # Redis lost its queue (a restart without persistence): sent again, as it was.
    cache.delete(dispatch.enqueued_marker(file.task_id))
    assert services.files_recover_stuck() == {"requeued": 1, "failed": 0}
    assert broker == [file.task_id, file.task_id]
    assert services.files_recover_stuck() == {"requeued": 0, "failed": 0}
    file.refresh_from_db()
    assert (file.status, file.generation) == ("queued", 1)
    assert Event.objects.count() == events


def test_recovery_requeues_a_lost_run_as_a_new_generation(
    user, rules, broker, settings
):
    file = create(user, server_4_bytes())
    long_ago = timezone.now() - timedelta(days=1)
    File.objects.filter(pk=file.pk).update(
        status=File.Status.PROCESSING, started_at=long_ago, attempts=1
    )

    assert services.files_recover_stuck() == {"requeued": 1, "failed": 0}

    lost_task = file.task_id
    file.refresh_from_db()
    assert (file.status, file.generation, file.attempts) == ("queued", 2, 1)
    assert file.task_id != lost_task
    assert services.file_process(file_id=file.pk, task_id=lost_task).status == "queued"


def test_the_sweep_removes_only_old_bytes_no_file_refers_to(user, enqueued, settings):
    file = create(user, server_4_bytes())
    uploads = Path(settings.MEDIA_ROOT) / "uploads"
    orphan, fresh = uploads / "orphan.json", uploads / "fresh.json"
    orphan.write_bytes(b"{}")
    fresh.write_bytes(b"{}")
    old = time.time() - 2 * 24 * 3600
    os.utime(orphan, (old, old))
    os.utime(file.content.path, (old, old))

    assert leftovers.files_sweep_leftovers() == 1

    assert not orphan.exists()
    assert fresh.exists() and Path(file.content.path).exists()
    fresh.unlink()


@pytest.mark.parametrize(
    ("size", "large_from", "queue"),
    [
        (10_000, 1_000_000, "celery"),
        (999_999, 1_000_000, "celery"),
        (1_000_000, 1_000_000, "large"),
        (200_000_000, 0, "celery"),
    ],
)
def test_large_files_are_sent_to_a_queue_of_their_own(
    settings, monkeypatch, size, large_from, queue
):
    """Small files never wait behind large ones: each kind has its queue (0: one)."""
    settings.DWELLFI_LARGE_FILE_BYTES = large_from
    sent = []
    monkeypatch.setattr(
        dispatch.current_app, "send_task", lambda *args, **options: sent.append(options)
    )
    assert dispatch.enqueue(file_id=1, task_id="t", size=size)
    assert sent[0]["queue"] == queue


# --- one transaction on a first delivery ---------------------------------------------


class WorkerKilled(BaseException):
    """Stands in for kill -9 mid-run: nothing catches it and the run's transaction
    is rolled back, as PostgreSQL does when the worker's connection drops."""


def worker_dies_mid_run(monkeypatch) -> None:
    def killed(*args, **kwargs):
        raise WorkerKilled

    monkeypatch.setattr(engine, "process", killed)


def deliver(file: File, *, first: bool) -> File:
    services.file_process(file_id=file.pk, task_id=file.task_id, first_delivery=first)
    file.refresh_from_db()
    return file


def test_a_first_delivery_is_processed_in_one_go_with_the_usual_outcome(
    user, rules, enqueued
):
    file = create(user, server_4_bytes())
    cache.set(dispatch.enqueued_marker(file.task_id), 1)

    file = deliver(file, first=True)

    assert (file.status, file.record_count, file.anomaly_count) == ("processed", 9, 27)
    assert file.attempts == 1 and file.started_at and file.finished_at
    assert MetricRecord.objects.filter(file=file).count() == 9
    events = list(Event.objects.filter(user=user).order_by("seq"))
    assert [e.type for e in events] == [
        "file.queued",
        "file.processing",
        "file.processed",
        "file.anomalies",
        "notification",
    ]
    processing = events[1].message
    assert (processing["status"], processing["file"]["status"]) == ("processing",) * 2
    assert processing["file"]["last_event_id"] == events[1].seq
    assert processing["file"]["attempts"] == 1
    assert events[2].message["file"]["last_event_id"] == events[-1].seq
    assert file.last_event_id == events[-1].seq
    # Its marker is gone: a message acked without an outcome would be sent again.
    assert dispatch.accepted([file.task_id]) == set()


def test_a_worker_killed_in_the_one_transaction_counts_on_redelivery(
    user, rules, enqueued, monkeypatch, settings
):
    """The attempt the killed run took is rolled back with it; the redelivered
    message takes the two-transaction way, which counts it: a file that keeps
    killing its worker still ends `failed` after the last attempt."""
    settings.DWELLFI_MAX_ATTEMPTS = 1
    file = create(user, server_4_bytes())
    worker_dies_mid_run(monkeypatch)

    with pytest.raises(WorkerKilled):
        deliver(file, first=True)
    file.refresh_from_db()
    assert (file.status, file.attempts) == ("queued", 0)
    assert event_types(user) == ["file.queued"]

    with pytest.raises(WorkerKilled):
        deliver(file, first=False)  # redelivered
    file.refresh_from_db()
    assert (file.status, file.attempts) == ("processing", 1)

    file = deliver(file, first=False)
    assert file.status == "failed"
    assert file.error["message"].startswith("Gave up after 1 attempts")
    assert not MetricRecord.objects.filter(file=file).exists()
    assert event_types(user) == [
        "file.queued",
        "file.processing",
        "file.failed",
        "notification",
    ]


@pytest.mark.parametrize(
    "why", ["attempts counted", "queued long ago", "too large for one go"]
)
def test_the_one_transaction_way_is_taken_only_when_it_is_safe(
    why, user, rules, enqueued, monkeypatch, settings
):
    """Recovery requeued a lost run (its attempts kept), or sent a task again
    (files queued longer than its grace period), or the file is large: the claim
    is committed before the run starts."""
    file = create(user, server_4_bytes())
    if why == "attempts counted":
        File.objects.filter(pk=file.pk).update(attempts=1)
    elif why == "queued long ago":
        old = timezone.now() - timedelta(
            seconds=settings.DWELLFI_QUEUED_GRACE_SECONDS / 2 + 1
        )
        File.objects.filter(pk=file.pk).update(updated_at=old)
    else:
        monkeypatch.setattr(services, "AT_ONCE_MAX_BYTES", file.size - 1)
    worker_dies_mid_run(monkeypatch)

    with pytest.raises(WorkerKilled):
        deliver(file, first=True)
    file.refresh_from_db()
    assert file.status == "processing"


def test_records_filling_a_second_batch_go_the_two_transaction_way(
    user, rules, enqueued, monkeypatch
):
    """A small file may hold more records than one batch (compressed, say): the
    one-transaction run stops at the second batch, keeping nothing, and the file is
    processed the usual way, its results and events once."""
    monkeypatch.setattr(engine, "BATCH_SIZE", 4)
    file = create(user, server_4_bytes())
    seen_at_boundary = []

    def boundary(sender, file_id, **kwargs):
        seen_at_boundary.append(File.objects.get(pk=file_id).status)

    sink.batch_boundary.connect(boundary)
    try:
        file = deliver(file, first=True)
    finally:
        sink.batch_boundary.disconnect(boundary)

    assert seen_at_boundary and set(seen_at_boundary) == {"processing"}
    assert (file.status, file.attempts, file.record_count) == ("processed", 1, 9)
    assert MetricRecord.objects.filter(file=file).count() == 9
    assert Anomaly.objects.filter(file=file).count() == 27
    assert event_types(user) == [
        "file.queued",
        "file.processing",
        "file.processed",
        "file.anomalies",
        "notification",
    ]


def test_a_malformed_file_on_a_first_delivery_fails_as_ever(user, rules, enqueued):
    file = deliver(create(user, broken_bytes()), first=True)
    assert file.status == "failed" and file.attempts == 1
    assert (file.error["line"], file.error["column"]) == (13, 20)
    assert event_types(user) == [
        "file.queued",
        "file.processing",
        "file.failed",
        "notification",
    ]


def test_recovery_sends_again_a_task_acknowledged_without_an_outcome(
    user, rules, enqueued, monkeypatch, settings
):
    """The hard time limit acknowledges the message of a run that committed
    nothing: the file is queued without an enqueued marker, so recovery sends
    its task again, and that delivery counts its attempt."""
    file = create(user, server_4_bytes())
    cache.set(dispatch.enqueued_marker(file.task_id), 1)
    worker_dies_mid_run(monkeypatch)
    with pytest.raises(WorkerKilled):
        deliver(file, first=True)
    old = timezone.now() - timedelta(seconds=settings.DWELLFI_QUEUED_GRACE_SECONDS + 1)
    File.objects.filter(pk=file.pk).update(updated_at=old)
    enqueued.clear()

    assert services.files_recover_stuck()["requeued"] == 1
    assert enqueued == [(file.pk, file.task_id)]
    with pytest.raises(WorkerKilled):
        deliver(file, first=True)  # sent again, not redelivered: still counted
    file.refresh_from_db()
    assert (file.status, file.attempts) == ("processing", 1)


def test_rules_kept_by_the_process_give_way_to_edited_ones_at_once(
    user, rules, enqueued
):
    """The rules a worker keeps are checked against the database's with each
    file's row: an edit made in any way applies to the very next file."""
    first = deliver(create(user, server_4_bytes()), first=True)
    assert first.anomaly_count == 27
    AnomalyRule.objects.filter(metric="cpu_usage").update(max_value=1000)
    second = deliver(create(user, server_4_bytes()), first=True)
    assert second.anomaly_count == 27 - 9
    AnomalyRule.objects.filter(metric="cpu_usage").delete()
    AnomalyRule.objects.filter(metric="memory_usage").update(enabled=False)
    third = deliver(create(user, server_4_bytes()), first=False)
    assert third.anomaly_count == 27 - 9 - 9
