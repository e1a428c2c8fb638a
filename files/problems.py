"""What is wrong with a record, and where: the messages and pointers of its issue.

The engine's walker finds a record's problem; the words and the RFC 6901 pointer
users read are made here, once for both parsing paths.
"""

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

TYPE_NAMES = {
    "start_map": "object",
    "start_array": "array",
    "string": "string",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}


def shorten(text: str, limit: int = 60) -> str:
    """A bounded quotation of document text for a message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def escape_token(token: str) -> str:
    """One RFC 6901 reference token."""
    return token.replace("~", "~0").replace("/", "~1")


def pointer(*tokens: str | int) -> str:
    """An RFC 6901 pointer from keys and array indexes."""
    return "".join(
        f"/{token}" if isinstance(token, int) else "/" + escape_token(token)
        for token in tokens
    )


def utc_timestamp(text: str) -> datetime | None:
    """An ISO 8601 timestamp in UTC (one without an offset taken as UTC), or None
    when the text is not one."""
    try:
        stamp = datetime.fromisoformat(text)
        if stamp.tzinfo is not UTC:
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            else:
                stamp = stamp.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return stamp


def record_problem(
    stamp_event: str | None,
    stamp_text: Any,
    stamp: datetime | None,
    values: list[Any],
    names: Sequence[str],
) -> tuple[str, str] | None:
    """The first problem of a record, as (field, message), or None if it is valid.

    `values` are the record's metrics in the order of `names`: a number, None, or
    the type name of what stood in a number's place.
    """
    if stamp_event is None:
        return "timestamp", "timestamp is required"
    if stamp_event != "string":
        return (
            "timestamp",
            f"timestamp must be a string, got {TYPE_NAMES[stamp_event]}",
        )
    if stamp is None:
        try:
            datetime.fromisoformat(stamp_text)
        except (ValueError, OverflowError):
            return "timestamp", f"timestamp is not ISO 8601: {shorten(stamp_text)}"
        # It parsed, so converting its offset to UTC went out of range.
        return "timestamp", f"timestamp is out of range: {shorten(stamp_text)}"
    for name, value in zip(names, values, strict=True):
        if isinstance(value, float) and not math.isfinite(value):
            return name, f"{name} must be a finite number"
        if isinstance(value, str):
            return name, f"{name} must be a number, got {value}"
    return None
