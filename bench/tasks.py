"""The floors of the latency and throughput benchmarks, run by the bench's worker.

* `bench.ping`: a no-op task that sends one live message through the channel
  layer to the user's WebSocket, as processing does: the least a file's outcome
  can cost on this stack.
* `bench.publish`: a no-op task that sends one bare Redis PUBLISH, read by a
  subscriber in the bench itself: what the stack's own parts cost, for scale.

Neither stores a result: a row in the results table per no-op task is a cost the
floor does not need.
Only the benchmark's worker imports this module (`celery worker -I bench.tasks`).
"""

import os

import redis
from celery import shared_task

from notifications.publisher import send_live

_redis: redis.Redis | None = None


@shared_task(name="bench.ping", ignore_result=True)
def ping(user_id: int, n: int) -> None:
    send_live(user_id, {"type": "bench.ping", "file_id": None, "n": n})


@shared_task(name="bench.publish", ignore_result=True)
def publish(channel: str, n: int) -> None:
    global _redis
    if _redis is None:  # one connection per pool process
        _redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    _redis.publish(channel, str(n))
