"""The Django admin: staff inspect files and results and edit the rules."""

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from files import services
from files.models import AnomalyRule, File, Upload

from .factories import server_4_bytes, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    admin = get_user_model().objects.create_superuser("admin", "a@example.com", "pw")
    client.force_login(admin)
    return client


@pytest.fixture
def file(user, rules, sent) -> File:
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


def test_file_change_page_links_to_its_results_with_counts(staff_client, file):
    page = staff_client.get(f"/admin/files/file/{file.pk}/change/").content.decode()
    anomalies = f"/admin/files/anomaly/?file__id__exact={file.pk}"
    errors = f"/admin/files/recorderror/?file__id__exact={file.pk}"
    events = f"/admin/notifications/event/?file_id={file.pk}"
    assert f'<a href="{anomalies}">27 anomalies</a>' in page
    assert f'<a href="{errors}">0 validation errors</a>' in page
    assert f'<a href="{events}">5 events</a>' in page
    listed = staff_client.get(anomalies)
    assert listed.status_code == 200 and listed.context["cl"].result_count == 27
    assert staff_client.get(errors).context["cl"].result_count == 0
    listed = staff_client.get(events)
    assert listed.status_code == 200 and listed.context["cl"].result_count == 5


def test_file_list_shows_counts_linked_to_results_and_durations(staff_client, file):
    page = staff_client.get("/admin/files/file/?o=12").content.decode()
    anomalies = f"/admin/files/anomaly/?file__id__exact={file.pk}"
    assert f'<a href="{anomalies}">27</a>' in page
    duration = (file.finished_at - file.started_at).total_seconds()
    assert f"{duration:.2f} s" in page


def test_results_and_events_link_back_to_their_file(staff_client, file):
    change = f"/admin/files/file/{file.pk}/change/"
    page = staff_client.get("/admin/files/anomaly/").content.decode()
    assert f'<a href="{change}">file {file.pk}</a> (metrics.json)' in page
    page = staff_client.get("/admin/notifications/event/").content.decode()
    assert f'<a href="{change}">file {file.pk}</a>' in page
    event = file.owner.events.first()
    page = staff_client.get(
        f"/admin/notifications/event/{event.pk}/change/"
    ).content.decode()
    assert "&quot;type&quot;: &quot;file.queued&quot;" in page


def test_deleting_in_the_admin_removes_the_bytes_and_tells_the_owner(
    staff_client, file, django_capture_on_commit_callbacks
):
    stored = file.content.path
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            "/admin/files/file/",
            {
                "action": "delete_selected",
                "_selected_action": [file.pk],
                "post": "yes",
            },
            follow=True,
        )
    assert response.status_code == 200
    assert not File.objects.filter(pk=file.pk).exists()
    assert not Path(stored).exists()
    assert file.owner.events.filter(type="file.deleted", file_id=file.pk).exists()
    page = staff_client.get("/admin/notifications/event/").content.decode()
    assert f"{file.pk} (deleted)" in page


def test_deleting_one_file_from_its_page_goes_through_the_service(staff_client, file):
    response = staff_client.post(
        f"/admin/files/file/{file.pk}/delete/", {"post": "yes"}, follow=True
    )
    assert response.status_code == 200
    assert not File.objects.filter(pk=file.pk).exists()
    assert file.owner.events.filter(type="file.deleted", file_id=file.pk).exists()


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
    assert response.context["adminform"].form.errors == {
        "max_value": ["The maximum (10) must not be below the minimum (90)."]
    }
    rule.refresh_from_db()
    assert (rule.min_value, rule.max_value) == (0, 85)


def test_the_rule_list_refuses_min_above_max_on_its_row(staff_client, rules):
    rule = AnomalyRule.objects.get(metric="cpu_usage")
    data = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-0-id": rule.pk,
        "form-0-min_value": "90",
        "form-0-max_value": "10",
        "form-0-enabled": "on",
        "_save": "Save",
    }
    response = staff_client.post("/admin/files/anomalyrule/?metric=cpu_usage", data)
    assert response.status_code == 200
    formset = response.context["cl"].formset
    assert formset.forms[0].errors["max_value"] == [
        "The maximum (10) must not be below the minimum (90)."
    ]
    rule.refresh_from_db()
    assert (rule.min_value, rule.max_value) == (0, 85)


def test_an_upload_whose_file_to_replace_is_gone_still_shows(staff_client, user):
    """`replaces` has no constraint: the file it names may be gone."""
    gone = Upload.objects.create(
        owner=user,
        filename="new.json",
        length=10,
        content="uploads/x",
        replaces_id=987654,
        expires=timezone.now(),
    )
    assert staff_client.get("/admin/files/upload/").status_code == 200
    page = staff_client.get(f"/admin/files/upload/{gone.pk}/change/")
    assert page.status_code == 200
