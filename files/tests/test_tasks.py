"""The Celery tasks, called directly (eagerly) as the worker would run them."""

import pytest
from celery.exceptions import Retry, SoftTimeLimitExceeded
from django.db import OperationalError

from files import services, tasks
from files.models import File

from .factories import server_4_bytes, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def file(user, rules, sent) -> File:
    return services.file_create(owner=user, upload=upload(server_4_bytes()))


def run(file: File):
    return tasks.process_file.apply(args=[file.pk], task_id=file.task_id)


def test_the_task_processes_the_file_its_message_names(file):
    assert run(file).get() == "processed"
    file.refresh_from_db()
    assert (file.status, file.anomaly_count) == ("processed", 27)


def test_a_message_for_a_deleted_file_is_skipped(file):
    task_id, file_id = file.task_id, file.pk
    file.delete()
    result = tasks.process_file.apply(args=[file_id], task_id=task_id)
    assert result.get() == "skipped"


def test_hitting_the_soft_time_limit_fails_the_file_with_the_reason(file, monkeypatch):
    def too_slow(**kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(services, "file_process", too_slow)
    assert run(file).get() == "failed"
    file.refresh_from_db()
    assert file.status == "failed" and "took longer than" in file.error["message"]


def test_a_defect_fails_the_file_instead_of_leaving_it_processing(file, monkeypatch):
    def broken(**kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(services, "file_process", broken)
    assert run(file).get() == "failed"
    file.refresh_from_db()
    assert file.error["message"] == "Internal error while processing (KeyError)"


def test_a_transient_database_error_is_retried(file, monkeypatch):
    def database_gone(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "file_process", database_gone)
    result = run(file)
    assert isinstance(result.result, Retry | OperationalError)
    file.refresh_from_db()
    assert file.status == "queued"


def test_the_recovery_task_reports_what_it_did(db):
    assert tasks.recover_stuck_files.apply().get() == {"requeued": 0, "failed": 0}
