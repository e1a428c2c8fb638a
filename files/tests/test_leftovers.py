"""The periodic backstop for results that outlived their file."""

import json

import pytest

from files import leftovers, services, tasks
from files.models import Anomaly, File, MetricRecord, PendingDeletion, RecordError

from .factories import metrics_document, server_4_bytes, upload

# Tasks are handed to conftest's stand-in broker (`sent`), processed here by hand.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]

RESULT_MODELS = (MetricRecord, Anomaly, RecordError)


def processed(user, content: bytes) -> File:
    file = services.file_create(owner=user, upload=upload(content))
    services.file_process(file_id=file.pk, task_id=file.task_id)
    return file


def with_anomalies_and_errors() -> bytes:
    """A metrics export with an anomaly (cpu_usage 800) and a skipped record."""
    document = metrics_document([(800, 60, 150, 200, 500, 300, 120)] * 3)
    document["metrics"].append({"timestamp": "yesterday"})
    return json.dumps(document).encode()


def results(file_id: int) -> list[int]:
    """How many records, anomalies and record errors the file has stored."""
    return [model.objects.filter(file_id=file_id).count() for model in RESULT_MODELS]


def test_the_sweep_removes_results_whose_file_is_gone(user, rules):
    kept = processed(user, server_4_bytes())
    orphaned = processed(user, with_anomalies_and_errors())
    pending = processed(user, server_4_bytes())
    stored = results(orphaned.pk)
    assert all(stored), stored
    # Rows gone without their PendingDeletion (as a lost purge would leave them),
    # and one whose deletion is still pending (the purge's to remove).
    File.objects.filter(pk=orphaned.pk).delete()
    PendingDeletion.objects.create(file_id=pending.pk)
    File.objects.filter(pk=pending.pk).delete()

    assert tasks.sweep_leftovers() == {"stored_files": 0, "result_rows": sum(stored)}

    assert results(orphaned.pk) == [0, 0, 0]
    assert results(kept.pk) == results(pending.pk) != [0, 0, 0]
    assert leftovers.results_sweep_orphans() == 0
