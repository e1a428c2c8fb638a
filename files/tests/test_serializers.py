"""How files look on the wire: the seed system's shape and types."""

import pytest

from files import selectors, services
from files.models import File
from files.serializers import SeedFileSerializer

from .factories import broken_bytes, server_4_bytes, upload

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]


def create(user, content: bytes) -> File:
    return services.file_create(owner=user, upload=upload(content))


def process(file: File) -> File:
    return services.file_process(file_id=file.pk, task_id=file.task_id)


def seed_shape(file: File, **context) -> dict:
    return SeedFileSerializer(file, context=context).data


def test_task_status_is_processing_until_the_outcome(user, rules):
    file = create(user, server_4_bytes())
    assert (seed_shape(file)["task_status"], seed_shape(file)["is_processed"]) == (
        "processing",
        False,
    )
    file.status = File.Status.PROCESSING
    assert seed_shape(file)["task_status"] == "processing"
    file = process(file)
    assert (seed_shape(file)["task_status"], seed_shape(file)["is_processed"]) == (
        "processed",
        True,
    )


def test_task_status_of_a_failed_file_is_its_error_text(user, rules):
    file = process(create(user, broken_bytes()))
    body = seed_shape(file)
    assert body["task_status"] == file.error_text
    assert body["task_status"].endswith("(line 13, column 20; byte offset 198)")
    assert body["is_processed"] is False


def test_user_ids_are_strings_or_null(user, rules):
    file = create(user, server_4_bytes())
    body = seed_shape(file)
    assert body["created_by_id"] == body["updated_by_id"] == str(user.pk)
    file.updated_by = None
    assert seed_shape(file)["updated_by_id"] is None


def test_meta_data_holds_the_chosen_records_and_the_statistics(user, rules):
    file = process(create(user, server_4_bytes()))
    records = selectors.metric_record_sample(file=file)
    meta = seed_shape(file, records=records)["meta_data"]

    assert meta["statistics"] == file.summary["metrics"]
    assert meta["anomaly_count"] == 27 and meta["record_count"] == 9
    assert len(meta["metrics"]) == 9
    assert meta["metrics"][0] == {
        "timestamp": "2024-09-19T10:00:00Z",
        "cpu_usage": 187.0,
        "memory_usage": 245.0,
        "disk_read": 112.0,
        "disk_write": 78.0,
        "network_in": 203.0,
        "network_out": 156.0,
        "response_time": 89.0,
    }


def test_without_records_meta_data_leaves_them_out(user, rules):
    file = process(create(user, server_4_bytes()))
    meta = seed_shape(file)["meta_data"]
    assert "metrics" not in meta
    assert meta["statistics"]["cpu_usage"]["max"] == 860


def test_a_json_file_keeps_its_structural_summary(user, rules):
    file = process(create(user, b'{"a": [1, 2]}'))
    assert file.kind == File.Kind.JSON
    assert seed_shape(file, records=[])["meta_data"] == file.summary
