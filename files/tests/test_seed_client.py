"""The seed system's own app against real daphne and a real worker, with only a token.

`seed_app` ports the Flutter app's requests and every cast it applies to answers
and socket messages; this walks through what a user of the app does: upload,
the notification, the list, the file page's charts, an update, its events, and a
malformed file. Any cast the app would fail, any "Unknown event type", fails here.
"""

import json
import re
import time
from dataclasses import dataclass

import pytest
from rest_framework.authtoken.models import Token

from conftest import EventClient

from .factories import SAMPLES, user_create
from .seed_app import (
    Api,
    DartError,
    File,
    FilePage,
    FileProcessed,
    FileProcessError,
    HomePage,
    Notification,
    date_time_parse,
    file_page_view,
    parse_file_event,
    socket_url,
)


@dataclass
class Samples:
    server_4: bytes
    broken: bytes
    broken_position: str  # where the broken file's error is


@pytest.fixture
def samples() -> Samples:
    return Samples(
        (SAMPLES / "server_4.json").read_bytes(),
        (SAMPLES / "server_1_broken.json").read_bytes(),
        "line 77, column 20; byte offset 1902",
    )


@pytest.fixture
def seed_user(rules):
    user = user_create()
    return user, Token.objects.create(user=user).key


def until(predicate, *pages, timeout: float = 30) -> None:
    """Let the pages handle what the socket received until `predicate()` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for page in pages:
            page.pump()
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"not reached in {timeout}s")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_seed_app_works_changed_only_by_a_token(live_stack, seed_user, samples):
    user, token = seed_user
    socket = EventClient(socket_url(live_stack.ws_url, token))
    api = Api(live_stack.base_url, token)
    document = json.loads(samples.server_4)

    # The app starts: its home page loads the list.
    home = HomePage(api, socket)
    assert home.files == []

    # Upload, as the floating button does: 200, `processing`, the spinner.
    uploaded = home.upload("server_4.json", samples.server_4)
    assert (uploaded.filename, uploaded.type) == ("server_4.json", "server_metadata")
    assert (uploaded.task_status, uploaded.is_processed) == ("processing", False)
    assert uploaded.size == len(samples.server_4)
    assert [tile.title for tile in home.tiles] == ["server_4.json"]

    # The outcome's Notification: shown, and the list loaded again.
    until(lambda: home.notifications, home)
    assert home.notifications == [
        Notification(
            user_id=str(user.pk),
            title="File processed: server_4.json",
            description="File processed: 9 records, 27 anomalies, 0 invalid records",
            is_major=True,
            event_name="Notification",
        )
    ]
    (tile,) = home.tiles
    assert (tile.trailing, tile.status, tile.opens) == ("check", "processed", True)
    assert home.files[0].created_by_id == home.files[0].updated_by_id == str(user.pk)

    # The file page: its line chart and pie from `meta_data.metrics`.
    page = FilePage(api, socket, home.files[0])
    records = document["metrics"]
    assert [y for _, y in page.view.series["cpu_usage"]] == [
        r["cpu_usage"] for r in records
    ]
    assert [y for _, y in page.view.series["disk_read"]] == [
        r["disk_read"] for r in records
    ]
    times = [x for x, _ in page.view.series["memory_usage"]]
    assert times == sorted(times) and len(times) == 9
    assert page.view.pie == {name: float(records[0][name]) for name in page.view.pie}
    assert page.view.status_text == (
        f"File Status: processed, Size: {len(samples.server_4)}"
    )
    assert page.view.update_enabled

    # Update File with a new version: its first record now spikes to 999.
    records[0]["cpu_usage"] = 999
    version_2 = json.dumps(document, indent=4).encode()
    updated = page.update("server_4_v2.json", version_2)
    assert (updated.filename, updated.type) == ("server_4_v2.json", "server_sensor")
    assert (updated.task_status, updated.is_processed) == ("processing", False)
    assert not page.view.update_enabled  # the spinner until it is processed

    # FileProcessed, then the anomalies as FileProcessError; each reloads the page.
    until(lambda: len(page.events) == 2 and len(home.notifications) == 2, page, home)
    processed, anomalies = page.events
    assert isinstance(processed, FileProcessed) and processed.is_major
    assert processed.file.id == page.file_id
    assert (processed.file.filename, processed.file.task_status) == (
        "server_4_v2.json",
        "processed",
    )
    assert isinstance(anomalies, FileProcessError) and anomalies.file_id == page.file_id
    assert anomalies.data.startswith("cpu_usage out of range: 999 at 2024-09-19T10:00")
    assert page.view.series["cpu_usage"][0][1] == 999.0
    assert page.view.update_enabled and page.snackbars == []
    assert home.tiles[0].title == "server_4_v2.json"

    # A malformed file: its error text in the list and in file_anomaly.data.
    broken = home.upload("server_1_broken.json", samples.broken)
    assert broken.task_status == "processing"
    until(lambda: len(home.notifications) == 3, home, page)
    assert home.notifications[-1].title == "File failed: server_1_broken.json"
    tile = next(t for t in home.tiles if t.title == "server_1_broken.json")
    assert (tile.trailing, tile.opens) == ("error", False)
    assert tile.status.endswith(f"({samples.broken_position})")
    failures = [
        parse_file_event(message)
        for message in socket.received()
        if message.get("file_id") == broken.id
    ]
    assert [(f.event_name, f.file_id, f.data) for f in failures] == [
        ("FileProcessError", broken.id, tile.status)
    ]

    # Nothing on the socket that the app could not parse, on any page.
    for message in socket.received():
        if "file_id" in message:
            parse_file_event(message)  # as a page open on that file would
        else:
            assert Notification.from_json(message).event_name == "Notification"
    assert [m["event_name"] for m in socket.received()] == [
        "FileProcessed",
        "FileProcessError",
        "Notification",
    ] * 2 + ["FileProcessError", "Notification"]
    assert page.snackbars == [] and socket.error is None
    assert re.fullmatch(r"\d+", home.notifications[0].user_id)
    socket.close()


# --- the port refuses what the app refuses (the shapes DwellFi answered before) ---

SEED_FILE = {
    "id": 7,
    "filename": "server_4.json",
    "size": 2383,
    "type": "server_metadata",
    "is_processed": True,
    "meta_data": {
        "metrics": [
            {
                "timestamp": "2024-09-19T10:00:00Z",
                **dict.fromkeys(
                    ("cpu_usage", "memory_usage", "disk_read", "disk_write"), 1.0
                ),
                **dict.fromkeys(("network_in", "network_out", "response_time"), 2),
            }
        ]
    },
    "task_id": "t",
    "task_status": "processed",
    "created_at": "2024-09-19T10:00:00.123456Z",
    "updated_at": "2024-09-19T10:00:00+05:30",
    "created_by_id": "1",
    "updated_by_id": None,
}


def test_the_port_accepts_the_seed_shape():
    file = File.from_json(SEED_FILE)
    view = file_page_view(file)
    assert view.pie["network_in"] == 2.0 and len(view.series["cpu_usage"]) == 1
    assert date_time_parse("2024-09-19 10:00", "t").hour == 10


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"created_by_id": 1}, "created_by_id"),  # ints failed the home list
        ({"filename": None}, "filename"),  # the canonical resource has `name`
        ({"created_at": "19/09/2024"}, "created_at"),
        ({"size": 1.5}, "size"),
    ],
)
def test_the_port_refuses_what_file_from_json_refuses(change, where):
    with pytest.raises(DartError, match=where):
        File.from_json({**SEED_FILE, **change})


@pytest.mark.parametrize(
    "meta_data",
    [
        {"metrics": {"cpu_usage": {"min": 1, "max": 2}}},  # statistics, not records
        {"metrics": []},  # the pie reads metrics[0]
        {},  # `.cast` on null
        {"metrics": [{"timestamp": "2024-09-19T10:00:00Z", "cpu_usage": None}]},
    ],
)
def test_the_port_refuses_what_the_file_page_cannot_draw(meta_data):
    with pytest.raises(DartError):
        file_page_view(File.from_json({**SEED_FILE, "meta_data": meta_data}))


def test_the_port_refuses_what_the_socket_listeners_refuse():
    with pytest.raises(DartError, match="Unknown event type"):
        parse_file_event({"event_name": "FileQueued", "file_id": 7})
    with pytest.raises(DartError, match="user_id"):
        Notification.from_json(
            {"event_name": "Notification", "is_major": True, "user_id": 1}
        )
    with pytest.raises(DartError, match="file_anomaly.data"):
        parse_file_event(
            {"event_name": "FileProcessError", "file_anomaly": {"file_id": 7}}
        )
