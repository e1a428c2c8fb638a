"""What notifications read of the files app: the one module that imports it.

The files app publishes its events through `notifications.publisher`; this is the
only way back. A socket's snapshot, the seed protocol's file shape, the events'
documented file resource and the admin's link to a file are read here, so the
dependency is visible in one place and the apps import each other in no circle.
"""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Exists, OuterRef

from files import selectors
from files.models import File
from files.serializers import FileItemSerializer, SeedFileSerializer

__all__ = [
    "FILE_STATUSES",
    "FileItemSerializer",
    "file_exists",
    "file_snapshot",
    "seed_files",
]

FILE_STATUSES = File.Status.choices


def file_snapshot(*, user: AbstractBaseUser) -> list[dict[str, Any]]:
    """The bounded resources of the files a socket shows when it opens."""
    rows = FileItemSerializer(selectors.file_snapshot(user=user), many=True).data
    return [dict(row) for row in rows]


def seed_files(*, user: AbstractBaseUser, ids: set[int]) -> dict[int, dict[str, Any]]:
    """The user's files among `ids` in the seed's shape, by id (one query)."""
    rows = selectors.file_list(user=user).filter(pk__in=ids)
    return {file["id"]: file for file in SeedFileSerializer(rows, many=True).data}


def file_exists() -> Exists:
    """An annotation: whether the row's `file_id` still names a file."""
    return Exists(File.objects.filter(pk=OuterRef("file_id")))
