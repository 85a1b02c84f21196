"""The HTTP side of the ASGI application: Django's handler, one thread hop per request.

Why not `get_asgi_application()`: a profile of the stock handler under load (bench/) shows
the view itself taking about a seventh of the CPU. The rest is asgiref plumbing: Django
wraps every request in a `ThreadSensitiveContext`, so asgiref starts a new OS thread per
request, and in async mode each sync middleware, signal and the view is its own hop
between the event loop and that thread (WhiteNoise is sync-only, so the chain even
switches async -> sync -> async). A fresh thread also means a fresh database connection.

This handler reads the body on the event loop, then runs request_started, the middleware
chain and the view in sync mode (as under WSGI) and request_finished, all in one hop to a
fixed pool of long-lived threads, and sends the response from the loop. The pool runs inside
asgiref's SyncToAsync, so `async_to_sync` from a view (the channel-layer broadcast after
commit) still runs on the server's event loop.

It mirrors `django.core.handlers.asgi.ASGIHandler.handle` of Django 5.2 and 6.0 (the same in
both for what is mirrored here; `read_body`, `create_request` and `send_response` are
inherited, so they are the installed version's own):
- `request_started` and `request_finished` (sent by `response.close()`) run on the thread
  that ran the view, so its database connection is the one cleaned up. A streaming response
  keeps that thread until it is sent (the pool starts a stand-in meanwhile), and its sync
  iterator is pulled there one chunk at a time.
- A `FileResponse` is read in blocks of `chunk_size` (64 KiB), as Django's handler sets.
- The body file is closed whatever happens, also when the view raises.
- While the view runs and the response is sent, the handler listens for `http.disconnect`:
  a sync view cannot be interrupted, but a client that left gets nothing more sent and a
  streaming body is no longer read (Django cancels its async view task instead).
"""

import asyncio
import itertools
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
from django.http import FileResponse, HttpResponseBase
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
        self._numbers = itertools.count(1)  # next() is atomic: threads add stand-ins
        self._local = threading.local()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if not self._started:
            with self._start_lock:
                if not self._started:
                    for _ in range(self.threads):
                        self._add_thread()
                    self._started = True
        future: Future = Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def keep_thread(self, pinned: "PinnedThread") -> None:
        """Once the running job returns, give its thread to `pinned` until that is released."""
        self._local.pinned = pinned

    def _add_thread(self) -> None:
        name = f"{self.name}_{next(self._numbers)}"
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            _run(*item)
            pinned = self._local.__dict__.pop("pinned", None)
            if pinned is not None:
                self._add_thread()  # a stand-in takes new requests meanwhile
                pinned.serve()
                self._work.put(None)  # one thread too many now: the first to see this retires


class PinnedThread(Executor):
    """The pool thread kept by one request: everything submitted runs on that one thread."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def release(self) -> None:
        self._work.put(None)

    def serve(self) -> None:
        while (item := self._work.get()) is not None:
            _run(*item)


def _run(future: Future, fn, args, kwargs) -> None:
    if not future.set_running_or_notify_cancel():
        return
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
        gone = asyncio.ensure_future(self.client_gone(receive))
        pinned = PinnedThread()
        try:
            response = await self.in_pool(self.respond)(scope, body_file, pinned)
            if not response.streaming:
                if not gone.done():
                    await self.send_response(response, send)
                return
            try:
                if not response.is_async:
                    chunks = response.streaming_content
                    response.streaming_content = self.pull(pinned, chunks, gone)
                if not gone.done():
                    await self.send_response(response, send)
            finally:
                try:
                    await self.on(pinned, response.close)()
                finally:
                    pinned.release()
        finally:
            gone.cancel()
            body_file.close()

    async def client_gone(self, receive) -> None:
        """Return when the client disconnects (the only message left after the body)."""
        while (await receive())["type"] != "http.disconnect":
            pass

    def in_pool(self, func):
        return self.on(self.executor, func)

    @staticmethod
    def on(executor: Executor, func):
        return sync_to_async(func, thread_sensitive=False, executor=executor)

    async def pull(
        self, pinned: PinnedThread, chunks: Iterator[bytes], gone: asyncio.Future
    ) -> AsyncIterator[bytes]:
        """Read a sync streaming body (a snapshot download) one chunk at a time on its thread.

        Django's own fallback reads the whole iterator into a list before sending anything,
        which holds a 50 MB snapshot file in memory; this keeps one chunk in flight, and stops
        reading when the client has gone.
        """
        done = object()
        pull = self.on(pinned, lambda: next(chunks, done))
        while not gone.done() and (chunk := await pull()) is not done:
            yield chunk

    def respond(self, scope, body_file, pinned: PinnedThread) -> HttpResponseBase:
        """Run one request through Django in this (pool) thread and return the response."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        try:
            request, response = self.create_request(scope, body_file)
            if request is not None:
                response = self.get_response(request)
                response._handler_class = self.__class__
        except BaseException:
            # Nothing to close: finish the request here, as closing its response would have.
            signals.request_finished.send(sender=self.__class__)
            raise
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size  # as Django's ASGIHandler does
        if response.streaming:
            # Sent and closed later, from this same thread (see `pull`, `__call__`).
            self.executor.keep_thread(pinned)
        else:
            # The body is already in memory: close now, in the thread that served the
            # request, so request_finished hands this thread's connection back to the pool.
            response.close()
        return response


def get_http_application() -> PooledASGIHandler:
    """Return the ASGI application serving HTTP requests with Django."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup(set_prefix=False)
    return PooledASGIHandler(threads=settings.STATE_HTTP_THREADS)
