"""The server-rendered pages, sign-in and password change, error pages, the health
check."""

import json
import re

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import include, path

from files import services
from files.models import File

from .factories import broken_bytes, metrics_document, server_4_bytes, upload

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]


def _boom(request):
    raise RuntimeError("a bug")


def _forbidden(request):
    raise PermissionDenied


# The site's routes plus two that fail, for the error pages (`@pytest.mark.urls`).
urlpatterns = [
    path("boom/", _boom),
    path("forbidden/", _forbidden),
    path("", include("dwellfi.urls")),
]
handler404 = "files.api.errors.not_found"
handler500 = "files.api.errors.server_error"


def processed(user, content: bytes) -> File:
    file = services.file_create(owner=user, upload=upload(content, "s4.json"))
    services.file_process(file_id=file.pk, task_id=file.task_id)
    file.refresh_from_db()
    return file


def test_pages_need_a_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert client.get("/login/").status_code == 200


def test_the_dashboard_lists_the_users_files(client, user, other_user, rules):
    mine = processed(user, server_4_bytes())
    theirs = processed(other_user, server_4_bytes())
    client.force_login(user)
    page = client.get("/").content.decode()
    assert f'id="file-{mine.pk}"' in page
    assert f'id="file-{theirs.pk}"' not in page
    assert 'type="file"' in page


def test_the_file_page_shows_summary_anomalies_and_errors(client, user, rules):
    file = processed(user, server_4_bytes())
    client.force_login(user)
    page = client.get(file.get_absolute_url()).content.decode()
    assert "server_002" in page
    assert "cpu_usage" in page and "860" in page


def test_the_file_page_shows_a_failure_with_its_position(client, user, rules):
    file = processed(user, broken_bytes())
    client.force_login(user)
    page = client.get(file.get_absolute_url()).content.decode()
    assert "line 13" in page and "column 20" in page


def test_another_users_file_page_does_not_exist(client, user, other_user, rules):
    theirs = processed(other_user, server_4_bytes())
    client.force_login(user)
    assert client.get(theirs.get_absolute_url()).status_code == 404


def test_health_check_reports_database_redis_and_broker(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "redis": "ok",
        "broker": "ok",
    }


def test_health_check_answers_503_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["redis"].startswith("error")
    assert response.json()["broker"].startswith("error")


def queued(user, name: str) -> File:
    return services.file_create(owner=user, upload=upload(server_4_bytes(), name))


def row_ids(page: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'<tr id="file-(\d+)" class="file-row"', page)]


def test_the_dashboard_filters_by_status_kind_and_name(client, user, rules):
    done = processed(user, server_4_bytes())
    broken = processed(user, broken_bytes())
    waiting = queued(user, "Waiting-Report.json")
    client.force_login(user)

    assert row_ids(client.get("/?status=failed").content.decode()) == [broken.pk]
    assert row_ids(client.get("/?kind=server_metrics").content.decode()) == [done.pk]
    assert row_ids(client.get("/?q=report").content.decode()) == [waiting.pk]
    assert row_ids(client.get("/?q=s4&status=queued").content.decode()) == []
    # Unknown values narrow nothing; the form shows what was asked for.
    page = client.get("/?status=bogus&kind=bogus&q=").content.decode()
    assert row_ids(page) == [waiting.pk, broken.pk, done.pk]
    page = client.get("/?status=failed&q=s4").content.decode()
    assert '<option value="failed" selected>' in page
    assert 'value="s4"' in page and 'id="filters-clear"' in page


def test_the_dashboard_paginates_keeping_the_filters(client, user, rules, settings):
    from files import views

    settings.DWELLFI_QUOTA_PROCESSING = 0  # more files queued than the default quota
    for n in range(views.PAGE_SIZE + 3):
        queued(user, f"f{n}.json")
    client.force_login(user)
    first = client.get("/?status=queued").content.decode()
    assert len(row_ids(first)) == views.PAGE_SIZE
    assert "?status=queued&amp;page=2" in first
    second = client.get("/?status=queued&page=2").content.decode()
    assert len(row_ids(second)) == 3
    assert not set(row_ids(first)) & set(row_ids(second))


def test_a_row_is_the_dashboards_partial_for_htmx_and_a_redirect_for_a_person(
    client, user, other_user, rules
):
    mine = processed(user, server_4_bytes())
    theirs = processed(other_user, server_4_bytes())
    client.force_login(user)

    fragment = client.get(f"/f/{mine.pk}/row/", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "HX-Request" in fragment["Vary"]
    row = fragment.content.decode().strip()
    assert row_ids(row) == [mine.pk]
    # The very row of the first paint: one template renders both.
    page = client.get("/").content.decode()
    assert row in page
    assert "files-data" not in page and "<template" not in page

    person = client.get(f"/f/{mine.pk}/row/")
    assert person.status_code == 302
    assert person["Location"] == mine.get_absolute_url()
    assert "HX-Request" in person["Vary"]
    theirs_row = client.get(f"/f/{theirs.pk}/row/", headers={"HX-Request": "true"})
    assert theirs_row.status_code == 404


def anomaly_values(page: str) -> list[str]:
    table = page.split('id="anomalies-table"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<td class="num strong">([^<]+)</td>', table)


def test_the_anomalies_sort_both_ways_and_paginate(client, user, rules):
    file = processed(user, server_4_bytes())
    client.force_login(user)
    url = file.get_absolute_url()

    by_record = anomaly_values(client.get(url).content.decode())
    assert by_record[:3] == ["187", "245", "276"] and len(by_record) == 27
    ascending = client.get(f"{url}?sort=value").content.decode()
    assert anomaly_values(ascending)[:2] == ["92", "132"]
    assert 'aria-sort="ascending"' in ascending
    assert "?sort=-value#anomalies" in ascending  # the header toggles the direction
    descending = client.get(f"{url}?sort=-value").content.decode()
    assert anomaly_values(descending)[0] == "860"
    assert 'aria-sort="descending"' in descending
    # An unknown sort is record order.
    assert anomaly_values(client.get(f"{url}?sort=pk").content.decode()) == by_record


def test_the_file_page_has_a_chart_per_metric_and_the_actions(client, user, rules):
    file = processed(user, server_4_bytes())
    client.force_login(user)
    page = client.get(file.get_absolute_url()).content.decode()
    assert len(re.findall(r'<figure class="chart" id="chart-\w+"', page)) == 7
    assert "vendor/uplot/uPlot.iife.min.js" in page
    # A refresh of the page (htmx's morph) keeps each chart as it is drawn.
    assert len(re.findall(r"<figure [^>]*hx-morph-skip>", page)) == 7
    assert "vendor/htmx/htmx.min.js" in page
    for action in (
        'id="download"',
        'id="reprocess"',
        'id="replace-input"',
        'id="delete"',
    ):
        assert action in page


def test_the_file_page_lists_validation_errors_with_pointers(client, user, rules):
    document = metrics_document()
    document["metrics"][1]["cpu_usage"] = "high"
    file = processed(user, json.dumps(document).encode())
    client.force_login(user)
    page = client.get(file.get_absolute_url()).content.decode()
    errors = page.split('id="errors-table"', 1)[1].split("</table>", 1)[0]
    assert "<code>/metrics/1/cpu_usage</code>" in errors
    assert "1 record skipped" in page


@pytest.mark.parametrize(
    ("path", "name"),
    [("vendor/uplot/uPlot.iife.min.js", "uPlot"), ("vendor/htmx/htmx.min.js", "htmx")],
)
def test_the_browser_libraries_are_served_as_static_files(client, path, name):
    from django.contrib.staticfiles import finders

    found = finders.find(path)
    assert found, f"node_modules missing {path}: run `npm ci` (make does)"
    with open(found, encoding="utf-8") as script:
        assert name in script.read(2000)


def test_sign_in_and_sign_out(client, user):
    response = client.post(
        "/login/", {"username": user.username, "password": "pw-test-123"}
    )
    assert response.status_code == 302 and response["Location"] == "/"
    page = client.get("/").content.decode()
    assert 'href="/password/"' in page and 'id="logout"' in page

    response = client.post("/logout/", {"next": "/login/?signed_out=1"})
    assert response["Location"] == "/login/?signed_out=1"
    assert "You have signed out." in client.get(response["Location"]).content.decode()
    assert client.get("/").status_code == 302


def test_a_wrong_password_is_explained_on_the_form(client, user):
    page = client.post("/login/", {"username": user.username, "password": "nope"})
    assert page.status_code == 200
    assert 'role="alert"' in page.content.decode()


def test_password_change(client, user):
    client.force_login(user)
    form = client.get("/password/").content.decode()
    assert 'autocomplete="current-password"' in form
    assert '<label for="id_new_password1">' in form

    wrong = client.post(
        "/password/",
        {
            "old_password": "not-it",
            "new_password1": "a-new-Passw0rd!",
            "new_password2": "a-new-Passw0rd!",
        },
    )
    assert wrong.status_code == 200 and 'aria-invalid="true"' in wrong.content.decode()

    done = client.post(
        "/password/",
        {
            "old_password": "pw-test-123",
            "new_password1": "a-new-Passw0rd!",
            "new_password2": "a-new-Passw0rd!",
        },
        follow=True,
    )
    assert done.redirect_chain[-1][0] == "/password/done/"
    assert "Password changed" in done.content.decode()
    user.refresh_from_db()
    assert user.check_password("a-new-Passw0rd!")
    assert client.get("/").status_code == 200  # still signed in here


def test_friendly_404_page_for_browsers_and_json_for_the_api(client, user):
    client.force_login(user)
    page = client.get("/f/999999/")
    assert page.status_code == 404
    assert "Page not found" in page.content.decode()
    assert client.get("/api/files/999999/").json() == {"detail": "Not found."}


@pytest.mark.urls(__name__)
def test_friendly_403_and_500_pages(user):
    client = Client(raise_request_exception=False)
    client.force_login(user)
    forbidden = client.get("/forbidden/")
    assert forbidden.status_code == 403
    assert "You cannot open this page" in forbidden.content.decode()
    error = client.get("/boom/")
    assert error.status_code == 500
    assert "Something went wrong on our side" in error.content.decode()


def test_an_expired_form_gets_a_friendly_403(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post("/password/", {"old_password": "x"})
    assert response.status_code == 403
    assert "This form has expired" in response.content.decode()
