"""The Django admin: staff inspect files and results and edit the rules."""

import pytest
from django.contrib.auth import get_user_model

from files import services
from files.models import AnomalyRule, File

from .factories import server_4_bytes, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    admin = get_user_model().objects.create_superuser("admin", "a@example.com", "pw")
    client.force_login(admin)
    return client


@pytest.fixture
def file(user, rules, monkeypatch) -> File:
    monkeypatch.setattr(services, "enqueue", lambda *, file_id, task_id: True)
    file = services.file_create(owner=user, upload=upload(server_4_bytes()))
    services.file_process(file_id=file.pk, task_id=file.task_id)
    file.refresh_from_db()
    return file


@pytest.mark.parametrize(
    "path",
    [
        "/admin/files/file/",
        "/admin/files/file/?status__exact=processed&kind__exact=server_metrics",
        "/admin/files/file/?q=metrics",
        "/admin/files/anomaly/",
        "/admin/files/recorderror/",
        "/admin/files/anomalyrule/",
        "/admin/notifications/event/",
        "/admin/django_celery_results/taskresult/",
    ],
)
def test_admin_pages_load(staff_client, file, path):
    assert staff_client.get(path).status_code == 200


def test_file_change_page_links_to_its_results(staff_client, file):
    page = staff_client.get(f"/admin/files/file/{file.pk}/change/").content.decode()
    anomalies = f"/admin/files/anomaly/?file__id__exact={file.pk}"
    events = f"/admin/notifications/event/?file_id={file.pk}"
    assert anomalies in page and events in page
    listed = staff_client.get(anomalies)
    assert listed.status_code == 200 and listed.context["cl"].result_count == 27
    listed = staff_client.get(events)
    assert listed.status_code == 200 and listed.context["cl"].result_count == 5


def test_reprocess_action_queues_the_selected_files(staff_client, file):
    response = staff_client.post(
        "/admin/files/file/",
        {"action": "reprocess", "_selected_action": [file.pk]},
        follow=True,
    )
    assert response.status_code == 200
    file.refresh_from_db()
    assert file.status == File.Status.QUEUED


def test_a_rule_with_min_above_max_is_refused(staff_client, rules):
    rule = AnomalyRule.objects.get(metric="cpu_usage")
    response = staff_client.post(
        f"/admin/files/anomalyrule/{rule.pk}/change/",
        {"metric": "cpu_usage", "min_value": 90, "max_value": 10, "enabled": "on"},
    )
    assert response.status_code == 200  # the form again, with the error
    rule.refresh_from_db()
    assert (rule.min_value, rule.max_value) == (0, 85)
