"""Per-user limits: stored bytes, files, and files queued or processing at once.

Each limit comes from the environment (DWELLFI_QUOTA_BYTES, DWELLFI_QUOTA_FILES,
DWELLFI_QUOTA_PROCESSING; 0 is no limit) and is checked twice: cheaply before an
upload's bytes are stored (so a refused upload writes nothing), and then for
certain inside the transaction that adds the file or queues it, while that holds
the owner's event cursor row lock (`notifications.publisher.events_lock`). Every
write that adds a file or queues one takes that lock before it commits, so two
requests of one user are checked one after the other: two uploads at once cannot
both take the last slot.
"""

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce

from .exceptions import QuotaExceeded
from .models import File

IN_FLIGHT = [File.Status.QUEUED, File.Status.PROCESSING]


def quota_check(
    *,
    owner_id: int,
    files: int = 0,
    size: int = 0,
    processing: int = 0,
    replacing: File | None = None,
) -> None:
    """Raise QuotaExceeded unless the owner may add `files` files of `size` bytes
    in all and queue `processing` more; `replacing` is a file whose bytes go."""
    limits = {
        "bytes": settings.DWELLFI_QUOTA_BYTES,
        "files": settings.DWELLFI_QUOTA_FILES,
        "processing": settings.DWELLFI_QUOTA_PROCESSING,
    }
    wanted = {"bytes": size, "files": files, "processing": processing}
    if not any(limits[name] > 0 and wanted[name] > 0 for name in limits):
        return
    used = File.objects.filter(owner_id=owner_id).aggregate(
        bytes=Coalesce(Sum("size"), 0),
        files=Count("id"),
        processing=Count("id", filter=Q(status__in=IN_FLIGHT)),
    )
    if replacing is not None:
        used["bytes"] -= replacing.size
    for name, limit in limits.items():
        if limit > 0 and wanted[name] > 0 and used[name] + wanted[name] > limit:
            raise QuotaExceeded(_MESSAGES[name](used[name], limit, size), limit=name)


_MESSAGES = {
    "bytes": lambda used, limit, size: (
        f"Storage limit reached: your files take {used} of your {limit} bytes, "
        f"and this one is {size}. Delete files to make room."
    ),
    "files": lambda used, limit, size: (
        f"File limit reached: you have {used} files, the most allowed ({limit}). "
        "Delete files to upload more."
    ),
    "processing": lambda used, limit, size: (
        f"Processing limit reached: {used} of your files are queued or processing, "
        f"the most allowed at once ({limit}). Try again when one has finished."
    ),
}
