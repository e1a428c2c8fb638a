"""The Celery application, configured from Django settings (CELERY_* names)."""

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_process_init
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dwellfi.settings")

app = Celery("dwellfi")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _send_through_one_loop(**kwargs) -> None:
    """Each pool process sends its live events through one long-lived event loop."""
    from notifications.publisher import start_sender

    start_sender()


@task_prerun.connect
@task_postrun.connect
def _connections_between_tasks(sender, **kwargs) -> None:
    """Give the database connection back to the pool, as Django does around each
    request (settings: CELERY_DB_REUSE_MAX keeps the pool itself); one that
    failed is closed, and the pool checks the next one it hands out. Not for a
    task run eagerly, inside its caller's transaction."""
    if not getattr(sender.request, "is_eager", False):
        close_old_connections()
