"""The channel layer on Redis: each Redis database is a doorbell of its own."""

import asyncio
import os
import subprocess
import sys

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from state import events

RING = (
    "from asgiref.sync import async_to_sync; from channels.layers import get_channel_layer; "
    "from state import events; async_to_sync(get_channel_layer().group_send)("
    "events.CHANGES_GROUP, {'type': events.DOORBELL_TYPE, 'revision': 7})"
)


def ring(redis_url: str) -> None:
    """Ring the changes doorbell from another process whose REDIS_URL is `redis_url`."""
    env = {**os.environ, "REDIS_URL": redis_url}
    subprocess.run([sys.executable, "manage.py", "shell", "-c", RING], cwd=settings.BASE_DIR,
                   env=env, check=True, capture_output=True, timeout=120)  # fmt: skip


def test_a_store_on_another_redis_database_does_not_ring_this_ones_doorbell():
    # Redis pub/sub is one namespace for a whole server: before the layer's prefix named the
    # database, a store on db 1 woke every stream of a store on db 0 (and a test asserting
    # silence failed while another suite ran on the same Redis).
    if not settings.REDIS_URL:
        pytest.skip("The channel layer is Redis on the PostgreSQL + Redis run only.")
    base, _, db = settings.REDIS_URL.rpartition("/")
    other = f"{base}/{(int(db or 0) + 1) % 16}"

    async def listen() -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(events.CHANGES_GROUP, channel)
        # One receive throughout: cancelling a pub/sub layer's receive unsubscribes it.
        received = asyncio.ensure_future(layer.receive(channel))
        try:
            await sync_to_async(ring)(other)
            await asyncio.sleep(1)
            assert not received.done()
            await sync_to_async(ring)(settings.REDIS_URL)  # the control: this one rings
            message = await asyncio.wait_for(received, timeout=10)
            assert message == {"type": events.DOORBELL_TYPE, "revision": 7}
        finally:
            await layer.group_discard(events.CHANGES_GROUP, channel)

    async_to_sync(listen)()
