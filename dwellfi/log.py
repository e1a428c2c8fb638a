"""What the logging libraries do not know: the Celery task and the file of a line.

django-guid gives every request an id (`X-Request-ID`), passes it to the tasks it
sends and stamps it on each record as `request_id`; python-json-logger writes each
record as one line of JSON. This filter adds the running task's id and, for the
processing task, the file's id (None outside a task; `extra` given wins).
"""

import logging

from celery import current_task

PROCESS_TASK = "files.tasks.process_file"


class TaskContext(logging.Filter):
    """Stamp `task_id` and `file_id` of the running Celery task on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task
        request = task.request if task else None
        if getattr(record, "task_id", None) is None:
            record.task_id = getattr(request, "id", None)
        if getattr(record, "file_id", None) is None:
            args = getattr(request, "args", None) or ()
            record.file_id = args[0] if task and task.name == PROCESS_TASK else None
        return True


class RefusalFilter(logging.Filter):
    """Django's refusals of malformed requests (`django.security.*`), without the
    traceback Django attaches: the client's error, not the code's, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security."):
            record.exc_info = None
            record.exc_text = None
        return True
