"""Event retention: old events are pruned, and a client behind them is told so."""

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.utils import timezone

from files import services
from files.tests.factories import server_4_bytes, upload, user_create
from notifications import tasks
from notifications.models import Event, EventCursor
from notifications.retention import events_prune

from .test_consumers import connect, token_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sent")]


def upload_for(user) -> int:
    return services.file_create(owner=user, upload=upload(server_4_bytes())).pk


def age(user, *, days: float, up_to: int) -> None:
    """Make the user's events up to `up_to` look `days` old."""
    Event.objects.filter(user=user, seq__lte=up_to).update(
        created_at=timezone.now() - timedelta(days=days)
    )


def seqs(user) -> list[int]:
    return list(Event.objects.filter(user=user).values_list("seq", flat=True))


def test_events_older_than_the_retention_are_pruned_and_remembered(
    user, other_user, settings
):
    settings.DWELLFI_EVENT_RETENTION_DAYS = 7
    for _ in range(4):
        upload_for(user)
    upload_for(other_user)
    age(user, days=8, up_to=3)
    age(other_user, days=6, up_to=1)

    assert events_prune() == 3
    assert seqs(user) == [4] and seqs(other_user) == [1]
    assert EventCursor.objects.get(user=user).pruned_seq == 3
    assert EventCursor.objects.get(user=other_user).pruned_seq == 0
    # The cursor handed out never goes back, whatever is left.
    assert EventCursor.objects.get(user=user).last_seq == 4
    assert events_prune() == 0  # nothing older left

    settings.DWELLFI_EVENT_RETENTION_DAYS = 0  # keep forever
    age(user, days=1000, up_to=4)
    assert events_prune() == 0 and seqs(user) == [4]


def test_the_job_runs_hourly_from_beat(user, settings):
    schedule = django_settings.CELERY_BEAT_SCHEDULE["notifications.prune_events"]
    assert schedule["task"] == "notifications.tasks.prune_events"
    assert schedule["schedule"] == timedelta(hours=1)
    settings.DWELLFI_EVENT_RETENTION_DAYS = 1
    upload_for(user)
    age(user, days=2, up_to=1)
    assert tasks.prune_events() == 1


def test_the_events_list_answers_410_for_a_cursor_behind_the_pruned_events(
    api, user, settings
):
    settings.DWELLFI_EVENT_RETENTION_DAYS = 7
    for _ in range(3):
        upload_for(user)
    age(user, days=8, up_to=2)
    events_prune()

    for after in (0, 1):
        response = api.get(f"/api/events/?after={after}")
        assert response.status_code == 410
        body = response.json()
        assert body["last_event_id"] == 3
        assert "no longer kept" in body["detail"]
    for after in (2, 3):  # nothing was missed
        response = api.get(f"/api/events/?after={after}")
        assert response.status_code == 200
        assert [e["id"] for e in response.json()["results"]] == [3][: 3 - after]


def test_a_page_starts_from_the_cursor_not_from_what_is_left(client, user, settings):
    settings.DWELLFI_EVENT_RETENTION_DAYS = 7
    upload_for(user)
    age(user, days=8, up_to=1)
    events_prune()
    client.force_login(user)
    assert b'<script id="last-event-id" type="application/json">1</script>' in (
        client.get("/").content
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("in_memory_layer")
async def test_a_socket_behind_the_pruned_events_gets_a_reset_snapshot(settings):
    settings.DWELLFI_EVENT_RETENTION_DAYS = 7

    @database_sync_to_async
    def history():
        user = user_create()
        file_ids = [upload_for(user) for _ in range(3)]
        age(user, days=8, up_to=2)
        events_prune()
        return user, file_ids

    user, file_ids = await history()
    token = await token_for(user)

    behind = await connect(f"token={token}&after=1")
    snapshot = await behind.receive_json_from(timeout=2)
    assert (snapshot["type"], snapshot["reset"]) == ("snapshot", True)
    assert snapshot["last_event_id"] == 3
    assert sorted(f["id"] for f in snapshot["files"]) == sorted(file_ids)
    assert await behind.receive_nothing(timeout=0.3)  # no replay after it

    level = await connect(f"token={token}&after=2")  # missed nothing pruned
    assert (await level.receive_json_from(timeout=2))["id"] == 3
    fresh = await connect(f"token={token}")
    first = await fresh.receive_json_from(timeout=2)
    assert (first["type"], first["reset"]) == ("snapshot", False)

    seed = await connect(f"user_id=x&token={token}&after=0")
    assert await seed.receive_nothing(timeout=0.3)  # the seed app gets no snapshot

    new_file = await database_sync_to_async(upload_for)(user)
    for communicator in (behind, level, fresh):
        message = await communicator.receive_json_from(timeout=2)
        assert (message["id"], message["file_id"]) == (4, new_file)
    for communicator in (behind, level, fresh, seed):
        await communicator.disconnect()
