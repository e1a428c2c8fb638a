"""The Celery application, configured from Django settings (CELERY_* names)."""

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dwellfi.settings")

app = Celery("dwellfi")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _send_through_one_loop(**kwargs) -> None:
    """Each pool process sends its live events through one long-lived event loop."""
    from notifications.publisher import start_sender

    start_sender()
