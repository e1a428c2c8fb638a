"""The server-rendered pages and the health check."""

import pytest

from files import services
from files.models import File

from .factories import broken_bytes, server_4_bytes, upload

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch) -> None:
    monkeypatch.setattr(services, "enqueue", lambda *, file_id, task_id: True)


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


def test_health_check_reports_database_and_redis(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_health_check_answers_503_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["redis"].startswith("error")
