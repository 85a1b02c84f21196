"""config.http's pooled handler, driven as an ASGI server drives it, against Django's semantics."""

import asyncio
import threading
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core import signals

from config.http import PooledASGIHandler

from . import urls

pytestmark = pytest.mark.urls("tests.config.urls")


@pytest.fixture
def record():
    """Record request_started / request_finished with their threads, beside the views' record."""
    urls.RECORD.clear()

    def started(**kwargs):
        urls.record("started")

    def finished(**kwargs):
        urls.record("finished")

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    yield urls.RECORD
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)


POOL_NAME = "test-http-pool"


@pytest.fixture(scope="module")
def handler() -> PooledASGIHandler:
    handler = PooledASGIHandler(threads=4)
    handler.executor.name = POOL_NAME  # to count its threads
    return handler


async def async_request(
    handler, path: str, *, method: str = "GET", body: bytes = b"", leave_after: int = 0
) -> list[dict[str, Any]]:
    """Run one request through `handler`; return the messages it sent.

    With `leave_after`, the client disconnects once that many body chunks have arrived.
    """
    sent: list[dict[str, Any]] = []
    left = asyncio.Event()
    requested = False

    async def receive():
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append({**message, "pulled": [what for what, _ in urls.RECORD].count("pull")})
        if leave_after and len([m for m in sent if m.get("body")]) == leave_after:
            left.set()
            for _ in range(5):  # let the handler hear of it, as a server's loop would
                await asyncio.sleep(0)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": f"/{path}", "raw_path": f"/{path}".encode(),
        "root_path": "", "query_string": b"", "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    await handler(scope, receive, send)
    return sent


def request(handler, path: str, **kwargs) -> list[dict[str, Any]]:
    return async_to_sync(async_request)(handler, path, **kwargs)


def pool_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith(POOL_NAME))


def threads_of(record, *whats: str) -> set[int]:
    return {thread for what, thread in record if what in whats}


def test_a_request_starts_runs_and_finishes_on_one_pool_thread(handler, record):
    for _ in range(6):
        record.clear()
        sent = request(handler, "plain")
        assert sent[0]["status"] == 200
        assert [what for what, _ in record] == ["started", "view", "finished"]
        (thread,) = threads_of(record, "started", "view", "finished")
        assert thread != threading.get_ident()


def test_a_streaming_response_is_pulled_and_finished_on_the_thread_of_its_view(handler, record):
    for _ in range(3):
        record.clear()
        sent = request(handler, "streamed")
        assert [what for what, _ in record] == [
            "started", "view", *["pull"] * urls.CHUNKS, "finished"
        ]  # fmt: skip
        assert len(threads_of(record, "started", "view", "pull", "finished")) == 1
        bodies = [m for m in sent if m.get("body")]
        assert b"".join(m["body"] for m in bodies).count(b"chunk") == urls.CHUNKS
        # One chunk in flight: the first is sent before the second is read.
        assert bodies[0]["pulled"] == 1


def test_streams_in_flight_keep_their_threads_and_the_pool_its_size(handler, record):
    """While every pool thread holds a stream being sent, other requests are still served."""

    async def run() -> float:
        held = [asyncio.create_task(async_request(handler, "held")) for _ in range(handler.threads)]
        try:
            await asyncio.sleep(0.3)  # every held stream is between its chunks, on its thread
            plain = await asyncio.wait_for(async_request(handler, "plain"), timeout=5)
            return plain[0]["status"]
        finally:
            urls.RELEASE.set()
            await asyncio.gather(*held)

    urls.RELEASE.clear()
    assert async_to_sync(run)() == 200
    # The stand-ins retire once the streams are done: the pool is back to its size.
    deadline = time.monotonic() + 3
    while pool_threads() > handler.threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool_threads() == handler.threads


def test_file_response_is_read_in_blocks_of_djangos_asgi_chunk_size(handler, record):
    sent = request(handler, "download")
    bodies = [m["body"] for m in sent if m.get("body")]
    assert sum(map(len, bodies)) == urls.FILE_BYTES
    assert len(bodies) == urls.FILE_BYTES // handler.chunk_size == 16


def test_a_view_that_raises_still_closes_the_body_file_and_finishes(handler, record, settings):
    settings.DEBUG_PROPAGATE_EXCEPTIONS = True  # so the exception leaves get_response
    urls.BODY_FILES.clear()
    with pytest.raises(RuntimeError, match="the view failed"):
        request(handler, "boom", method="POST", body=b"x" * 100)
    (body_file,) = urls.BODY_FILES
    assert body_file.closed
    assert [what for what, _ in record] == ["started", "view", "finished"]
    assert len(threads_of(record, "started", "view", "finished")) == 1


def test_a_client_that_leaves_stops_the_streaming_body_and_the_request_finishes(handler, record):
    sent = request(handler, "streamed", leave_after=2)
    pulled = [what for what, _ in record].count("pull")
    assert pulled < urls.CHUNKS
    assert len([m for m in sent if m.get("body")]) <= pulled
    assert [what for what, _ in record][-1] == "finished"
