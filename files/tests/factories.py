"""Test data: users, uploads and metrics documents in the seed system's format."""

import itertools
import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile

_counter = itertools.count(1)

# The seed system's real files, beside the repository: ../shared/samples.
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"

# The seed system's sample `server_4.json`: 9 records, 27 anomalies under the
# default rules.
SERVER_4_VALUES = [
    (187, 245, 112, 78, 203, 156, 89),
    (276, 132, 45, 189, 67, 298, 23),
    (700, 555, 235, 315, 630, 420, 225),
    (320, 756, 665, 320, 640, 630, 745),
    (630, 257, 370, 525, 650, 440, 540),
    (340, 758, 575, 330, 660, 450, 245),
    (350, 769, 380, 635, 670, 460, 250),
    (860, 780, 485, 340, 680, 470, 255),
    (92, 215, 178, 56, 289, 134, 201),
]
METRIC_NAMES = (
    "cpu_usage",
    "memory_usage",
    "disk_read",
    "disk_write",
    "network_in",
    "network_out",
    "response_time",
)


def user_create(**fields: Any):
    """A user with a unique name and the password `pw-test-123`."""
    n = next(_counter)
    fields.setdefault("username", f"user{n}")
    return get_user_model().objects.create_user(password="pw-test-123", **fields)


def metrics_document(
    values: list[tuple[float, ...]] = SERVER_4_VALUES, server_id: str = "server_002"
) -> dict[str, Any]:
    """A one-server metrics export, one record a minute from 10:00."""
    return {
        "server_id": server_id,
        "server_name": "web-server-03",
        "location": "data-center-4",
        "metrics": [
            {
                "timestamp": f"2024-09-19T10:{minute:02d}:00Z",
                **dict(zip(METRIC_NAMES, row, strict=True)),
            }
            for minute, row in enumerate(values)
        ],
    }


def server_4_bytes() -> bytes:
    """The sample `server_4.json`, pretty-printed like the original."""
    return json.dumps(metrics_document(), indent=4).encode()


def broken_bytes() -> bytes:
    """A metrics export with the `{` of its last record missing (like server_1_broken).

    The parser meets `"timestamp"` as an array value, then the `:` after it:
    line 13, column 20.
    """
    return (
        b'{\n  "metrics": [\n    {\n      "timestamp": "2024-09-19T10:00:00Z",\n'
        b'      "cpu_usage": 800\n    },\n    {\n'
        b'      "timestamp": "2024-09-19T10:01:00Z",\n'
        b'      "cpu_usage": 20\n    },\n\n   \n'
        b'        "timestamp": "2024-09-19T10:07:00Z",\n'
        b'        "cpu_usage": 260\n    }\n  ]\n}\n'
    )


def upload(content: bytes, name: str = "metrics.json") -> SimpleUploadedFile:
    """An uploaded file as a view or service receives it."""
    return SimpleUploadedFile(name, content, content_type="application/json")


RECORD = (
    '{"timestamp":"2024-09-%02dT%02d:%02d:%02dZ","cpu_usage":%d,"memory_usage":50,'
    '"disk_read":100,"disk_write":200,"network_in":300,"network_out":400,'
    '"response_time":%d}'
)


def metrics_bytes(records: int) -> bytes:
    """A one-server export, a record a second; every tenth has cpu_usage 90 (>85)."""
    rows = ",".join(
        RECORD
        % (
            10 + i // 86400,
            i // 3600 % 24,
            i // 60 % 60,
            i % 60,
            90 if i % 10 == 0 else 40,
            i % 150,
        )
        for i in range(records)
    )
    return f'{{"server_id":"s1","metrics":[{rows}]}}'.encode()


def expected_anomalies(records: int) -> int:
    return (records + 9) // 10


def long_named_servers_bytes(servers: int = 1000) -> bytes:
    """An export of many servers whose id, name and location are as long as the
    engine keeps (255 characters, of 4 bytes each in UTF-8), one record each: a
    summary listing them all is about 3 MB."""
    long = "\U0001d521" * 300  # cut to 255 characters by the engine

    def server(n: int) -> dict[str, Any]:
        return {
            "server_id": f"{n:04d}-{long}",
            "server_name": f"{n:04d}-{long}",
            "location": f"{n:04d}-{long}",
            "metrics": [
                {"timestamp": "2024-09-19T10:00:00Z", "cpu_usage": 90, "disk_read": 9}
            ],
        }

    return json.dumps([server(n) for n in range(servers)]).encode()
