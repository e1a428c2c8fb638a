"""Sending from sync code: one long-lived event loop per process, messages in order."""

import asyncio
import os

import pytest
from channels.layers import get_channel_layer

from notifications import publisher


@pytest.fixture
def sender(monkeypatch):
    monkeypatch.setattr(publisher, "_sender", None)
    publisher.start_sender()
    return publisher._sender


def test_a_worker_sends_through_one_loop_in_order(sender):
    layer = get_channel_layer()

    async def receive_what_sync_code_sends() -> list[int]:
        channel = await layer.new_channel()
        await layer.group_add(publisher.user_group(999_001), channel)
        try:
            await asyncio.to_thread(
                lambda: [
                    publisher.send_live(999_001, {"type": "test", "n": n})
                    for n in range(30)
                ]
            )
            return [
                (await asyncio.wait_for(layer.receive(channel), 10))["message"]["n"]
                for _ in range(30)
            ]
        finally:
            await layer.group_discard(publisher.user_group(999_001), channel)

    assert asyncio.run(receive_what_sync_code_sends()) == list(range(30))
    # The same loop (and so the same Redis connection) served every message.
    assert publisher._sender is sender and sender.loop.is_running()


def test_starting_again_keeps_the_loop_but_a_forked_child_gets_its_own(
    sender, monkeypatch
):
    publisher.start_sender()
    assert publisher._sender is sender

    monkeypatch.setattr(os, "getpid", lambda: sender.pid + 1)
    publisher.start_sender()
    assert publisher._sender is not sender


def test_a_send_that_fails_is_logged_not_raised(sender, monkeypatch, caplog):
    class Broken:
        async def group_send(self, group, message):
            raise ConnectionError("redis is gone")

    monkeypatch.setattr(publisher, "get_channel_layer", lambda: Broken())
    publisher.send_live(1, {"type": "file.progress"})
    assert "could not send file.progress to user 1" in caplog.text
