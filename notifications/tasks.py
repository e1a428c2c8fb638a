"""Periodic jobs of the notifications app."""

from celery import shared_task

from .retention import events_prune


@shared_task
def prune_events() -> int:
    """Periodic: delete durable events older than the retention period."""
    return events_prune()
