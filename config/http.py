"""The HTTP side of the ASGI application: Django's handler, one thread hop per request.

Why not `get_asgi_application()`: a profile of the stock handler under load (bench/) shows
the view itself taking about a seventh of the CPU. The rest is asgiref plumbing: Django
wraps every request in a `ThreadSensitiveContext`, so asgiref starts a new OS thread per
request, and in async mode each sync middleware, signal and the view is its own hop
between the event loop and that thread (WhiteNoise is sync-only, so the chain even
switches async -> sync -> async). A fresh thread also means a fresh database connection.

This handler reads the body on the event loop, then runs request_started, the middleware
chain and the view in sync mode (as under WSGI) and request_finished, all in one hop to a
fixed pool of long-lived threads, and sends the response from the loop. The semantics are
Django's: the same middleware, signals and connection handling. The pool runs inside
asgiref's SyncToAsync, so `async_to_sync` from a view (the channel-layer broadcast after
commit) still runs on the server's event loop.
"""

import os
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor, Future

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import HttpResponseBase
from django.urls import set_script_prefix


class DaemonThreadPool(Executor):
    """A fixed pool of daemon threads, started on first use (so after any worker fork).

    Not ThreadPoolExecutor: its threads are joined at interpreter exit, so a request caught
    when the server stops its event loop (a view waiting in `async_to_sync` for the
    broadcast) kept the process alive forever after SIGTERM.
    """

    def __init__(self, *, threads: int, name: str) -> None:
        self.threads, self.name = threads, name
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._started = False
        self._start_lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if not self._started:
            with self._start_lock:
                if not self._started:
                    for n in range(self.threads):
                        thread = threading.Thread(
                            target=self._serve, name=f"{self.name}_{n}", daemon=True
                        )
                        thread.start()
                    self._started = True
        future: Future = Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def _serve(self) -> None:
        while True:
            future, fn, args, kwargs = self._work.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                future.set_exception(exc)
            else:
                future.set_result(result)


class PooledASGIHandler(ASGIHandler):
    """Serve HTTP with Django in sync mode on a fixed pool of threads."""

    def __init__(self, *, threads: int) -> None:
        base.BaseHandler.__init__(self)  # not ASGIHandler's: it loads the async chain
        self.load_middleware(is_async=False)
        self.threads = threads
        self.executor = DaemonThreadPool(threads=threads, name="http")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        response = await self.in_pool(self.respond)(scope, body_file)
        if response.streaming and not response.is_async:
            response.streaming_content = self.pull_in_pool(response.streaming_content)
        try:
            await self.send_response(response, send)
        finally:
            if response.streaming:
                await self.in_pool(response.close)()
                body_file.close()

    def in_pool(self, func):
        return sync_to_async(func, thread_sensitive=False, executor=self.executor)

    async def pull_in_pool(self, chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
        """Read a sync streaming body (a snapshot download) one chunk at a time in the pool.

        Django's own fallback reads the whole iterator into a list before sending anything,
        which holds a 50 MB snapshot file in memory; this keeps one chunk in flight.
        """
        done = object()
        pull = self.in_pool(lambda: next(chunks, done))
        while (chunk := await pull()) is not done:
            yield chunk

    def respond(self, scope, body_file) -> HttpResponseBase:
        """Run one request through Django in this (pool) thread and return the response."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
        if not response.streaming:
            # The body is already in memory: close now, in the thread that served the
            # request, so request_finished hands this thread's connection back to the pool.
            response.close()
            body_file.close()
        return response


def get_http_application() -> PooledASGIHandler:
    """Return the ASGI application serving HTTP requests with Django."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup(set_prefix=False)
    return PooledASGIHandler(threads=settings.STATE_HTTP_THREADS)
