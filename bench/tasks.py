"""The floor of the latency and throughput benchmarks: a Celery task that does
nothing but send one live message through the channel layer, as processing does.

Only the benchmark's worker imports it (`celery worker -I bench.tasks`).
"""

from celery import shared_task

from notifications.publisher import send_live


@shared_task(name="bench.ping")
def ping(user_id: int, n: int) -> None:
    send_live(user_id, {"type": "bench.ping", "file_id": None, "n": n})
