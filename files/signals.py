"""Signals processing sends, for whoever needs to watch it run."""

from django.dispatch import Signal

# Sent by the worker before it stores each batch of records after the first (with
# `file_id`, `generation` and `batch`, counting from 1): where a run notices that it
# was superseded. The concurrency tests hold a worker here to race it on purpose.
batch_boundary = Signal()
