"""`Mirror`: a local dict of the values under some prefixes, kept in sync with the store.

It lists `entries` (remembering the `revision` the listing was read at), then watches from
that revision. A change the listing already showed (the entry's revision is as new) is
skipped; a restore or a compacted log lists again. Read it as a mapping (`mirror[key]`),
or take a consistent copy with `snapshot()`.
"""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import aclosing
from typing import Any

from .errors import ResyncRequired
from .models import Change, Entry, Progress


class _State(Mapping):
    def __init__(self, client, prefixes: list[str], *, progress_interval: float) -> None:
        if isinstance(prefixes, str):
            raise TypeError("prefixes is a list of strings")
        self.client = client
        self.prefixes = list(prefixes)
        self.progress_interval = progress_interval
        self.revision: int | None = None  # everything up to it is reflected here
        self.resyncs = 0
        self._values: dict[str, Any] = {}
        self._revisions: dict[str, int] = {}
        self._lock = threading.Lock()

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        return len(self._values)

    def snapshot(self) -> dict[str, Any]:
        """Return a copy of the mirrored values, consistent as of `revision`."""
        with self._lock:
            return dict(self._values)

    def _load(self, entries: list[Entry], revision: int) -> None:
        with self._lock:
            self._values = {entry.key: entry.value for entry in entries}
            self._revisions = {entry.key: entry.revision for entry in entries}
            self.revision = revision

    def _apply(self, item: Change | Progress) -> Change | None:
        """Apply a change the listing did not already show; return it if it was applied."""
        with self._lock:
            self.revision = item.revision
            if isinstance(item, Progress) or item.revision <= self._revisions.get(item.key, 0):
                return None
            if item.op in ("delete", "expire"):
                self._values.pop(item.key, None)
                self._revisions.pop(item.key, None)
            elif item.op == "set":
                self._values[item.key] = item.new_value
                self._revisions[item.key] = item.revision
            elif item.key in self._revisions:  # metadata: the value is unchanged
                self._revisions[item.key] = item.revision
            return item


class Mirror(_State):
    """The blocking mirror: `follow()` in your own loop, or `start()` a background thread."""

    _thread: threading.Thread | None = None
    _watch = None
    _stopping = False
    error: BaseException | None = None  # what stopped the background thread, if anything

    def sync(self) -> None:
        """List every entry under the prefixes, replacing the local copy."""
        first: int | None = None
        entries: list[Entry] = []
        for prefix in self.prefixes:
            cursor = None
            while True:
                page = self.client.entries_page(prefix, cursor=cursor)
                first = page.revision if first is None else first
                entries.extend(page.items)
                if not (cursor := page.next_cursor):
                    break
        self._load(entries, first)

    def follow(self) -> Iterator[Change]:
        """List, then yield each change as it is applied; list again after a reset."""
        if self.revision is None:
            self.sync()
        while not self._stopping:
            self._watch = self.client.watch(
                self.prefixes,
                since_revision=self.revision,
                progress_interval=self.progress_interval,
                include_progress=True,
            )
            try:
                for item in self._watch:
                    if (change := self._apply(item)) is not None:
                        yield change
            except ResyncRequired:
                self.resyncs += 1
                self.sync()
            finally:
                self._watch.close()

    def start(self) -> "Mirror":
        """Follow the store in a daemon thread until `stop()`."""
        if self.revision is None:
            self.sync()
        self._thread = threading.Thread(target=self._run, name="statehub-mirror", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for _ in self.follow():
                pass
        except BaseException as exc:  # noqa: BLE001 - kept for the owner to see
            self.error = exc

    def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "Mirror":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for(self, revision: int, timeout: float = 10.0) -> bool:
        """Wait until the mirror reflects every change up to `revision`; False on timeout."""
        deadline = time.monotonic() + timeout
        while (self.revision or 0) < revision:
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


class AsyncMirror(_State):
    """The asyncio mirror: `async for change in mirror.follow()`, or `start()` a task."""

    _task: asyncio.Task | None = None
    _watch = None

    async def sync(self) -> None:
        first: int | None = None
        entries: list[Entry] = []
        for prefix in self.prefixes:
            cursor = None
            while True:
                page = await self.client.entries_page(prefix, cursor=cursor)
                first = page.revision if first is None else first
                entries.extend(page.items)
                if not (cursor := page.next_cursor):
                    break
        self._load(entries, first)

    async def follow(self) -> AsyncIterator[Change]:
        if self.revision is None:
            await self.sync()
        while True:
            self._watch = self.client.watch(
                self.prefixes,
                since_revision=self.revision,
                progress_interval=self.progress_interval,
                include_progress=True,
            )
            try:
                async for item in self._watch:
                    if (change := self._apply(item)) is not None:
                        yield change
            except ResyncRequired:
                self.resyncs += 1
                await self.sync()
            finally:
                await self._watch.aclose()

    async def start(self) -> "AsyncMirror":
        if self.revision is None:
            await self.sync()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        # aclosing: a cancelled `async for` leaves its generator suspended for the event loop
        # to finalize at shutdown, when the WebSocket it would close can no longer answer.
        async with aclosing(self.follow()) as changes:
            async for _ in changes:
                pass

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop following; never waits more than `timeout` for the task to wind down."""
        if self._task is not None:
            self._task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (asyncio.CancelledError, TimeoutError):
                pass

    async def wait_for(self, revision: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while (self.revision or 0) < revision:
            if self._task is not None and self._task.done():
                self._task.result()
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True
