"""DwellFi project package; exports the Celery app so workers find its tasks."""

from .celery import app as celery_app

__all__ = ("celery_app",)
