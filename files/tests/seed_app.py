"""A port of the seed system's Flutter app's network behaviour, changed only by a token.

Written from `frontend/dwell_fi_assignment/lib/` of InvincibleSihag/dwellFi_Assignment
(the Dart file each piece comes from is named in its docstring). Every field access
is ported with the cast Dart applies to it, as a check that raises `DartError`
where the app would throw: `json['x']` passed to a `String` parameter, `as String`,
`as bool`, `.toDouble()`, `DateTime.parse`, `.cast<Map<String, dynamic>>()`, an
index into a list. The requests are the app's own (Dio's multipart layout, fields
first; the exact paths and trailing slashes; `statusCode == 200` checked
exactly), plus `Authorization: Token KEY` and `&token=KEY` on the socket.
"""

import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

import httpx

from .factories import METRIC_NAMES

SEED_USER_ID = "qwertyuiop"  # what AuthRepositoryImpl.getUserId() returns


class DartError(AssertionError):
    """What would throw in the app: a failed cast, a call on null, a bad index."""


class Failure(Exception):  # noqa: N818 (the app's own name)
    """The app's `Failure`: shown to the user as an error message."""


# --- Dart's casts ----------------------------------------------------------------

_DART_TYPES = {
    "String": (str,),
    "int": (int,),
    "double": (float,),
    "bool": (bool,),
    "Map<String, dynamic>": (dict,),
    "List": (list,),
}


def cast(value: Any, dart_type: str, what: str) -> Any:
    """`value as T` (or `dynamic` passed where T is expected); `T?` allows null."""
    nullable = dart_type.endswith("?")
    base = dart_type.removesuffix("?")
    if value is None and nullable:
        return None
    # A JSON true is not an int in Dart, a JSON 1 is not a double.
    is_bool_as_number = isinstance(value, bool) and base in ("int", "double")
    if not isinstance(value, _DART_TYPES[base]) or is_bool_as_number:
        raise DartError(
            f"{what}: type '{_dart_type_name(value)}' is not a subtype of "
            f"type '{dart_type}'"
        )
    return value


def _dart_type_name(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "bool"
    for name, types in _DART_TYPES.items():
        if isinstance(value, types):
            return name
    return type(value).__name__


def to_double(value: Any, what: str) -> float:
    """`value.toDouble()` on a dynamic value: only a num has it."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        raise DartError(
            f"{what}: NoSuchMethodError: Class '{_dart_type_name(value)}' has no "
            "instance method 'toDouble'"
        )
    return float(value)


# dart:core DateTime._parseFormat
_DATE_TIME = re.compile(
    r"^([+-]?\d{4,6})-?(\d\d)-?(\d\d)"
    r"(?:[ T](\d\d)(?::?(\d\d)(?::?(\d\d)(?:[.,](\d+))?)?)?"
    r"( ?[zZ]| ?([-+])(\d\d)(?::?(\d\d))?)?)?$"
)


def date_time_parse(value: Any, what: str) -> datetime:
    """`DateTime.parse(value)`: a String in the format dart:core accepts."""
    text = cast(value, "String", what)
    match = _DATE_TIME.match(text)
    if match is None:
        raise DartError(f"{what}: FormatException: Invalid date format {text}")
    year, month, day, hour, minute, second, fraction, zone, sign, zh, zm = (
        match.groups()
    )
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    tz = None
    if zone is not None:
        offset = timedelta(hours=int(zh or 0), minutes=int(zm or 0))
        tz = timezone(-offset if sign == "-" else offset) if sign else UTC
    return datetime(
        int(year),
        int(month),
        int(day),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micros,
        tzinfo=tz,
    )


def milliseconds_since_epoch(moment: datetime) -> float:
    """`.millisecondsSinceEpoch.toDouble()` (no zone: local time, as in Dart)."""
    return float(int(moment.timestamp() * 1000))


# --- lib/core/common/models/file_models.dart -------------------------------------


@dataclass(frozen=True)
class File:
    """`File` (file_models.dart)."""

    filename: str
    size: int | None
    type: str
    is_processed: bool | None
    meta_data: dict | None
    id: int
    created_at: datetime
    updated_at: datetime
    created_by_id: str | None = None
    updated_by_id: str | None = None
    task_status: str | None = None

    @classmethod
    def from_json(cls, json: Any) -> "File":
        """`File.fromJson`: used for the home list and `FileProcessed.file`."""
        json = cast(json, "Map<String, dynamic>", "File.fromJson(json)")
        return cls(
            **cls._common(json, "File.fromJson"),
            created_by_id=cast(json.get("created_by_id"), "String?", "created_by_id"),
            updated_by_id=cast(json.get("updated_by_id"), "String?", "updated_by_id"),
        )

    @classmethod
    def from_response(cls, data: Any, where: str) -> "File":
        """The `File(...)` the repositories build from an answer (no user ids)."""
        data = cast(data, "Map<String, dynamic>", f"{where}: response.data")
        return cls(**cls._common(data, where))

    @staticmethod
    def _common(json: dict, where: str) -> dict[str, Any]:
        return {
            "filename": cast(json.get("filename"), "String", f"{where}: filename"),
            "size": cast(json.get("size"), "int?", f"{where}: size"),
            "type": cast(json.get("type"), "String", f"{where}: type"),
            "is_processed": cast(
                json.get("is_processed"), "bool?", f"{where}: is_processed"
            ),
            "task_status": cast(
                json.get("task_status"), "String?", f"{where}: task_status"
            ),
            "meta_data": cast(
                json.get("meta_data"), "Map<String, dynamic>?", f"{where}: meta_data"
            ),
            "id": cast(json.get("id"), "int", f"{where}: id"),
            "created_at": date_time_parse(
                json.get("created_at"), f"{where}: created_at"
            ),
            "updated_at": date_time_parse(
                json.get("updated_at"), f"{where}: updated_at"
            ),
        }


# --- lib/features/file_feature/domain/entities.dart ------------------------------


@dataclass(frozen=True)
class Notification:
    """`Notification.fromJson` (entities.dart): every field cast with `as`."""

    user_id: str
    title: str
    description: str
    is_major: bool
    event_name: str

    @classmethod
    def from_json(cls, json: dict) -> "Notification":
        return cls(
            user_id=cast(json.get("user_id"), "String", 'json["user_id"] as String'),
            title=cast(json.get("title"), "String", 'json["title"] as String'),
            description=cast(
                json.get("description"), "String", 'json["description"] as String'
            ),
            is_major=cast(json.get("is_major"), "bool", 'json["is_major"] as bool'),
            event_name=cast(
                json.get("event_name"), "String", 'json["event_name"] as String'
            ),
        )


@dataclass(frozen=True)
class FileProcessed:
    """`FileProcessed` (entities.dart)."""

    event_name: str
    is_major: bool
    status_code: int
    status_message: str
    file: File


@dataclass(frozen=True)
class FileProcessError:
    """`FileProcessError` with its `FileAnomaliesBase` (entities.dart)."""

    event_name: str
    is_major: bool
    status_code: int
    status_message: str
    file_id: int
    data: str


def parse_file_event(data: Any) -> FileProcessed | FileProcessError:
    """`FileEventRepositoryImpl._parseEvent` (file_event_repository_impl.dart)."""
    if not isinstance(data, dict):
        raise DartError("Data is not a valid map")
    if not isinstance(data.get("event_name"), str):
        raise DartError("event_name is not a String")
    name = data["event_name"]
    if name == "FileProcessed":
        return FileProcessed(
            **_event_fields(data, 200, "File processed successfully"),
            file=File.from_json(data.get("file")),
        )
    if name == "FileProcessError":
        anomaly = data.get("file_anomaly")
        if not isinstance(anomaly, dict):
            raise DartError("data['file_anomaly']['file_id']: not a map")
        return FileProcessError(
            **_event_fields(data, 400, "File processing failed"),
            file_id=cast(anomaly.get("file_id"), "int", "file_anomaly.file_id"),
            data=cast(anomaly.get("data"), "String", "file_anomaly.data"),
        )
    raise DartError("Unknown event type")


def _event_fields(data: dict, status_code: int, status_message: str) -> dict:
    """The fields every event reads, with the app's defaults for absent ones."""
    return {
        "event_name": data["event_name"],
        "is_major": cast(_or(data.get("is_major"), False), "bool", "is_major"),
        "status_code": cast(
            _or(data.get("status_code"), status_code), "int", "status_code"
        ),
        "status_message": cast(
            _or(data.get("status_message"), status_message), "String", "status_message"
        ),
    }


def _or(value: Any, default: Any) -> Any:
    """Dart's `??`."""
    return default if value is None else value


# --- lib/features/file_feature/presentation/pages/ (what the page reads) ---------


@dataclass(frozen=True)
class FilePageView:
    """What `FilePage` draws for a loaded file: the charts' data and the status."""

    series: dict[str, list[tuple[float, float]]]
    pie: dict[str, float]
    status_text: str
    update_enabled: bool


LINE_METRICS = ("cpu_usage", "memory_usage", "disk_read")  # metrics_line_chart.dart
PIE_METRICS = METRIC_NAMES[:6]  # pie_chart.dart: every metric but response_time


def file_page_view(file: File) -> FilePageView:
    """The `FileLoaded` branch of `FilePage.build` (file_page.dart), with its charts.

    `file.metaData?['metrics'].cast<Map<String, dynamic>>() ?? []` feeds
    `MetricsChart`; `PieChartWidget` gets `file.metaData?['metrics'][0]`.
    """
    metrics = None
    if file.meta_data is not None:
        raw = file.meta_data.get("metrics")
        if not isinstance(raw, list):
            raise DartError(
                f"metaData['metrics'].cast(): NoSuchMethodError on "
                f"'{_dart_type_name(raw)}' (a List was expected)"
            )
        metrics = raw
    records = [
        cast(record, "Map<String, dynamic>", "metrics.cast<Map<String, dynamic>>()")
        for record in metrics or []
    ]
    series = {
        name: [
            (
                milliseconds_since_epoch(
                    date_time_parse(record.get("timestamp"), "metric['timestamp']")
                ),
                to_double(record.get(name), f"metric['{name}'].toDouble()"),
            )
            for record in records
        ]
        for name in LINE_METRICS
    }
    if metrics is None:
        raise DartError("PieChartWidget(metrics: null): Null is not a Map")
    if not metrics:
        raise DartError("metaData['metrics'][0]: RangeError (index): Invalid value")
    first = cast(metrics[0], "Map<String, dynamic>", "metaData['metrics'][0]")
    pie = {
        name: to_double(first.get(name), f"metrics['{name}'].toDouble()")
        for name in PIE_METRICS
    }
    if file.is_processed is None:
        raise DartError("file.isProcessed!: Null check operator used on a null value")
    return FilePageView(
        series=series,
        pie=pie,
        status_text=f"File Status: {file.task_status}, Size: {file.size}",
        update_enabled=file.is_processed,
    )


@dataclass(frozen=True)
class FileTile:
    """One row of `FileList` (file_list.dart)."""

    title: str
    trailing: str  # "check", "spinner" or "error"
    status: str
    opens: bool


def file_tile(file: File) -> FileTile:
    """`FileList`'s `ListTile` for a file: the icon, the status and whether a tap
    opens the file page."""
    processed = file.is_processed is not None and file.is_processed
    if processed:
        trailing = "check"
    elif file.task_status is not None and file.task_status == "processing":
        trailing = "spinner"
    else:
        trailing = "error"
    return FileTile(file.filename, trailing, file.task_status or "Unknown", processed)


# --- the repositories: the app's requests ----------------------------------------


def dio_multipart(fields: dict[str, str], file_part: tuple[str, str, bytes]):
    """The body and content type Dio's `FormData.fromMap` sends: fields, then files."""
    boundary = f"--dio-boundary-{secrets.randbelow(2**32):010d}"
    body = bytearray()
    for name, value in fields.items():
        body += f"--{boundary}\r\n".encode()
        body += f'content-disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += value.encode() + b"\r\n"
    name, filename, content = file_part
    body += f"--{boundary}\r\n".encode()
    body += (
        f'content-disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "content-type: application/json\r\n\r\n"
    ).encode()
    body += content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


class Api:
    """Dio with `backendUrl`, plus the one change: the token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.headers = {"Authorization": f"Token {token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Dio throws on a status outside 2xx (validateStatus); the app catches it."""
        response = httpx.request(
            method,
            self.base_url + path,
            headers={**self.headers, **kwargs.pop("headers", {})},
            timeout=30,
            **kwargs,
        )
        if not 200 <= response.status_code < 300:
            raise Failure(f"DioException [bad response]: {response.status_code}")
        return response

    def send_file(
        self, method: str, path: str, form: str, declared_type: str, name: str, data
    ) -> httpx.Response:
        """The app's upload and update bodies: its JSON form field, then the file."""
        # The app writes that JSON by string interpolation, newlines included.
        details = f'{{\n"filename": "{name}",\n"type": "{declared_type}"\n}}'
        body, content_type = dio_multipart({form: details}, ("file", name, data))
        return self.request(
            method, path, content=body, headers={"content-type": content_type}
        )


class HomePageRepository:
    """home_page_repository_impl.dart."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def get_files(self) -> tuple[list[File], dict[datetime, int]]:
        """`getFiles`: the bare array, each item through `File.fromJson`."""
        response = self.api.request("GET", "files/files/")
        if response.status_code != 200:
            raise Failure("Failed to get files")
        data = response.json()
        if not isinstance(data, list):
            raise DartError(f"for (var file_data in fileData): {_dart_type_name(data)}")
        files = [File.from_json(item) for item in data]
        per_day: dict[datetime, int] = {}
        for file in files:
            day = datetime(
                file.created_at.year, file.created_at.month, file.created_at.day
            )
            per_day[day] = per_day.get(day, 0) + 1
        files.sort(key=lambda f: f.created_at, reverse=True)
        return files, per_day

    def upload_file(self, name: str, content: bytes) -> File:
        """`uploadFile`: 200 exactly, or "Failed to upload file"."""
        response = self.api.send_file(
            "POST",
            "files/uploadfile/",
            "file_data_create_form",
            "server_metadata",
            name,
            content,
        )
        if response.status_code != 200:
            raise Failure("Failed to upload file")
        return File.from_response(response.json(), "uploadFile")


class FileRepository:
    """file_repository_impl.dart."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def get_file_by_id(self, file_id: int) -> File:
        """`getFileById`: `files/files/$id/`, 200 exactly."""
        response = self.api.request("GET", f"files/files/{file_id}/")
        if response.status_code != 200:
            raise Failure("Failed to get file by ID")
        return File.from_response(response.json(), "getFileById")

    def update_file(self, file: File, name: str, content: bytes) -> File:
        """`updateFile`: `PUT files/updatefile/$id`, 200 exactly."""
        response = self.api.send_file(
            "PUT",
            f"files/updatefile/{file.id}",
            "file_update_form",
            "server_sensor",
            name,
            content,
        )
        if response.status_code != 200:
            raise Failure("Failed to update file")
        return File.from_response(response.json(), "updateFile")


def socket_url(ws_base_url: str, token: str) -> str:
    """init_dependencies.dart's socket URL, with the token added."""
    return (
        f"{ws_base_url.rstrip('/')}/notification/events"
        f"?user_id={SEED_USER_ID}&token={token}"
    )


# --- the pages: what each does with the socket's messages -------------------------


class Socket(Protocol):
    """`SocketServiceImpl`: every message, decoded, in order (an EventClient)."""

    def received(self) -> list[Any]: ...


class HomePage:
    """`HomePage` with its `HomeBloc`: the list, uploads, and `Notification`s."""

    def __init__(self, api: Api, socket: Socket) -> None:
        self.repository = HomePageRepository(api)
        self.socket = socket
        self.seen = 0  # subscribed when the app starts
        self.files: list[File] = []
        self.tiles: list[FileTile] = []
        self.notifications: list[Notification] = []
        self.load()

    def load(self) -> None:
        """`LoadFilesEvent`."""
        self.files, _ = self.repository.get_files()
        self.tiles = [file_tile(file) for file in self.files]

    def upload(self, name: str, content: bytes) -> File:
        """`UploadFileEvent`: on success the list is loaded again."""
        file = self.repository.upload_file(name, content)
        self.load()
        return file

    def pump(self) -> None:
        """`getStream("Notification")`: each one cast, shown, and the list reloaded.

        A failed cast there is uncaught in the app: it raises here too.
        """
        messages = self.socket.received()
        for message in messages[self.seen :]:
            if message.get("event_name") == "Notification":
                self.notifications.append(Notification.from_json(message))
                self.load()
        self.seen = len(messages)


class FilePage:
    """`FilePage` with its `FileBloc` and `FileEventRepositoryImpl` for one file."""

    def __init__(self, api: Api, socket: Socket, file: File) -> None:
        if not file_tile(file).opens:
            raise DartError("FileList's onTap opens only processed files")
        self.repository = FileRepository(api)
        self.socket = socket
        self.file_id = file.id
        self.seen = len(socket.received())  # a broadcast stream: from now on
        self.events: list[FileProcessed | FileProcessError] = []
        self.snackbars: list[str] = []
        self.file: File | None = None
        self.view: FilePageView | None = None
        self.load()

    def load(self) -> None:
        """`LoadFile`: the file by id, then the page built for it."""
        self.show(self.repository.get_file_by_id(self.file_id))

    def show(self, file: File) -> None:
        """`FileLoaded(file)`: the page is built at once."""
        self.file, self.view = file, file_page_view(file)

    def update(self, name: str, content: bytes) -> File:
        """The "Update File" button, then `UpdateFile`."""
        if not self.view.update_enabled:
            raise DartError("the Update File button does nothing until processed")
        self.show(replace(self.file, is_processed=False, task_status="processing"))
        updated = self.repository.update_file(self.file, name, content)
        self.show(updated)
        return updated

    def pump(self) -> None:
        """`getStreamWithFileId`: each message parsed; a failure is a snackbar, an
        event reloads the file."""
        messages = self.socket.received()
        for message in messages[self.seen :]:
            if message.get("file_id") != self.file_id:
                continue
            try:
                event = parse_file_event(message)
            except DartError as exc:
                self.snackbars.append(str(exc))
                continue
            self.events.append(event)
            self.load()
        self.seen = len(messages)
