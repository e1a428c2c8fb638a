"""API tokens: looked up once in a while, refused at once when revoked here."""

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dwellfi import auth
from files.tests.factories import user_create

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _nothing_kept():
    auth._kept.clear()
    yield
    auth._kept.clear()


def client_with(token: Token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def test_a_token_is_looked_up_once_while_it_is_kept():
    client = client_with(Token.objects.create(user=user_create()))
    for looked_up in (True, False):
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/api/events/").status_code == 200
        lookups = [q for q in queries if "authtoken_token" in q["sql"]]
        assert bool(lookups) is looked_up


def test_a_deleted_token_is_refused_at_once():
    token = Token.objects.create(user=user_create())
    client = client_with(token)
    assert client.get("/api/events/").status_code == 200
    token.delete()
    assert client.get("/api/events/").status_code == 401


def test_a_deactivated_user_is_refused_at_once():
    user = user_create()
    client = client_with(Token.objects.create(user=user))
    assert client.get("/api/events/").status_code == 200
    user.is_active = False
    user.save()
    assert client.get("/api/events/").status_code == 401


def test_a_token_deleted_by_another_process_is_refused_once_its_time_is_up(
    settings, monkeypatch
):
    settings.DWELLFI_TOKEN_CACHE_SECONDS = 5
    token = Token.objects.create(user=user_create())
    client = client_with(token)
    assert client.get("/api/events/").status_code == 200
    with connection.cursor() as cursor:  # no signal here: another process did it
        cursor.execute("DELETE FROM authtoken_token WHERE key = %s", [token.key])
    assert client.get("/api/events/").status_code == 200  # still kept
    now = time.monotonic()
    monkeypatch.setattr(auth.time, "monotonic", lambda: now + 5.1)
    assert client.get("/api/events/").status_code == 401
