"""Request and session records: buffered in process, written in batches through the write path.

Request threads and the event loop only append to a bounded buffer (`Tracker.record`, never
blocks, never raises); one background writer thread per process drains it every
`STATE_TRACKING_FLUSH_INTERVAL_SECS` with one `services.state_bulk` call per batch, so the
records are audited and streamed like any other change. A full buffer drops records and
counts them; a failed batch is logged and counted. On a clean exit (SIGTERM under daphne or
uvicorn: both return from their main loop, so `atexit` runs) the writer drains the buffer.

Session records are read-merge-written: each batch reads the current `session:<username>`
values once, merges the updates into them and writes each with `expected_version`, so two
processes never lose each other's fields (a conflict is retried in the next batch).
"""

import asyncio
import atexit
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import close_old_connections, connection

from state import rules, services
from state.exceptions import VersionConflict

from . import selectors

logger = logging.getLogger(__name__)

SOURCE = "tracking"
ACTOR = "tracking"
# Failures are logged at most this often (a store outage must not flood the log).
FAILURE_LOG_INTERVAL_SECS = 10.0
# A session update that keeps conflicting with other writers is given up after this many tries.
MAX_SESSION_ATTEMPTS = 3
BACKOFF_MAX_SECS = 10.0
SESSION_FIELDS = ("last_request", "correlation_id", "active", "last_heartbeat")


def now_iso(moment: datetime | None = None) -> str:
    """Return `moment` (default now) as ISO 8601 UTC with a Z, as the API renders times."""
    return (moment or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def valid_key(key: str) -> bool:
    return rules.KEY_PATTERN.fullmatch(key) is not None and key not in rules.RESERVED_KEYS


def request_key(correlation_id: str) -> str:
    return settings.STATE_REQUEST_PREFIX + correlation_id


def session_key(username: str) -> str:
    return settings.STATE_SESSION_PREFIX + username


def is_untracked(path: str) -> bool:
    """Whether requests to `path` are left untracked (probes, metrics, static files, …)."""
    return path.startswith(tuple(settings.STATE_TRACKING_UNTRACKED_PATHS))


@dataclass(slots=True)
class _Put:
    """A whole record to store (request, completion)."""

    key: str
    value: dict[str, Any]
    ttl: int


@dataclass(slots=True)
class _SessionUpdate:
    """Fields to merge into a session record; `heartbeat` marks a heartbeat-only refresh."""

    key: str
    fields: dict[str, Any]
    heartbeat: bool
    attempts: int = 0


class Tracker:
    """The process's tracking buffer and its background writer."""

    def __init__(self, *, background: bool = True) -> None:
        # background=False: no writer thread; records wait for `flush()` in the caller (tests
        # in one process, whose database transaction must see the writes).
        self.background = background
        self._buffer: deque[_Put | _SessionUpdate] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry: list[_SessionUpdate] = []
        # Open WebSocket connections of this process, by session key: kept active while open.
        self._connections: dict[str, int] = {}
        self._heartbeat_written: dict[str, float] = {}
        self._last_refresh = 0.0
        self._last_failure_log = 0.0
        # After a failed batch the writer waits longer before the next (up to BACKOFF_MAX_SECS):
        # while the store is down each attempt holds the process's group commit for a whole
        # pool timeout, delaying the requests' own writes (and their 503s).
        self._backoff = 0.0
        self.last_batch_size = self.max_batch_size = 0
        self.counters = dict.fromkeys(
            ("recorded", "written", "batches", "operations", "dropped", "failed", "coalesced",
             "skipped", "conflicts"),
            0,
        )  # fmt: skip

    # --- the request side: append, never block ---------------------------------------------

    def record(self, item: _Put | _SessionUpdate) -> None:
        """Buffer one record for the writer; a full buffer drops it (and counts it)."""
        with self._lock:
            if len(self._buffer) >= settings.STATE_TRACKING_BUFFER_SIZE:
                self.counters["dropped"] += 1
                return
            self._buffer.append(item)
            self.counters["recorded"] += 1
        if self.background and (self._thread is None or self._pid != os.getpid()):
            self._loop = _serving_loop()
            self._start()

    def skip(self) -> None:
        with self._lock:
            self.counters["skipped"] += 1

    def put(self, *, key: str, value: dict[str, Any], ttl: int) -> None:
        if valid_key(key):
            self.record(_Put(key=key, value=value, ttl=ttl))
        else:
            self.skip()

    def update_session(self, *, username: str, fields: dict[str, Any], heartbeat: bool) -> None:
        key = session_key(username)
        if not valid_key(key):
            # e.g. a Django username with "+": an encoded key would not be the user's own key
            # (access rules, default subscription), so such users get no session record.
            self.skip()
            return
        if heartbeat:
            written = self._heartbeat_written.get(key)
            now = time.monotonic()
            if written is not None and now - written < settings.STATE_SESSION_HEARTBEAT_WRITE_SECS:
                with self._lock:
                    self.counters["coalesced"] += 1
                return
            self._heartbeat_written[key] = now
        self.record(_SessionUpdate(key=key, fields=fields, heartbeat=heartbeat))

    def connection_opened(self, username: str) -> None:
        key = session_key(username)
        with self._lock:
            self._connections[key] = self._connections.get(key, 0) + 1
        self.update_session(
            username=username, fields={"active": True, "last_heartbeat": now_iso()},
            heartbeat=False,
        )  # fmt: skip

    def connection_closed(self, username: str) -> None:
        key = session_key(username)
        with self._lock:
            left = self._connections.get(key, 0) - 1
            if left > 0:
                self._connections[key] = left
            else:
                self._connections.pop(key, None)

    def stats(self) -> dict[str, int]:
        """Return the counters (each only ever grows): what the metrics export copies."""
        with self._lock:
            return dict(self.counters)

    def buffer_state(self) -> dict[str, int]:
        """Return the gauges: records buffered now, and the last and largest batch sizes."""
        with self._lock:
            return {"buffered": len(self._buffer), "last_batch_size": self.last_batch_size,
                    "max_batch_size": self.max_batch_size}  # fmt: skip

    # --- the writer ------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="tracking-writer", daemon=True)
            self._thread.start()
        atexit.register(self.shutdown)

    def _run(self) -> None:
        while True:
            self._wake.wait(settings.STATE_TRACKING_FLUSH_INTERVAL_SECS + self._backoff)
            stopping = self._stopping
            if not stopping:
                self._refresh_open_connections()
            self._use_loop(None if stopping else self._loop)
            self.flush()
            if stopping:
                return

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the writer after it has written everything buffered (clean exit)."""
        thread = self._thread
        if thread is None or not thread.is_alive() or self._pid != os.getpid():
            return
        # The interpreter is exiting: asgiref can no longer start the thread a doorbell needs
        # (RuntimeError: cannot schedule new futures after interpreter shutdown). The doorbell
        # is only a hint; other processes read these writes from the event log on their next
        # poll (STATE_STREAM_POLL_INTERVAL_SECS).
        settings.STATE_BROADCAST_CHANGES = False
        self._stopping = True
        self._wake.set()
        thread.join(settings.STATE_TRACKING_SHUTDOWN_TIMEOUT_SECS if timeout is None else timeout)
        if thread.is_alive():
            logger.warning("tracking: shutdown timed out; %d records not written",
                           len(self._buffer))  # fmt: skip
        state = {**self.stats(), **self.buffer_state()}
        logger.info("tracking: stopped: %s", " ".join(f"{k}={v}" for k, v in state.items()))

    def _use_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        # The write path rings the stream's doorbell after commit on the event loop asgiref
        # recorded for this thread (state.events._ring); this thread is ours, so record the
        # server's loop here. At shutdown the loop has stopped: forget it, or the doorbell
        # would be queued on a loop that never runs it.
        local = SyncToAsync.threadlocal
        if loop is not None:
            local.main_event_loop, local.main_event_loop_pid = loop, os.getpid()
        else:
            local.__dict__.pop("main_event_loop", None)

    def _refresh_open_connections(self) -> None:
        """Keep the sessions of open WebSocket connections active (a heartbeat each period)."""
        period = settings.STATE_SESSION_HEARTBEAT_WRITE_SECS
        now = time.monotonic()
        if now - self._last_refresh < period:
            return
        self._last_refresh = now
        for key, written in list(self._heartbeat_written.items()):
            if now - written >= period:
                del self._heartbeat_written[key]
        with self._lock:
            open_keys = list(self._connections)
        prefix = settings.STATE_SESSION_PREFIX
        for key in open_keys:
            self.update_session(
                username=key[len(prefix) :],
                fields={"active": True, "last_heartbeat": now_iso()},
                heartbeat=True,
            )

    def flush(self) -> int:
        """Write everything buffered now, in batches; return how many records were taken."""
        taken = 0
        with self._flush_lock:
            while True:
                room = max(settings.STATE_TRACKING_BATCH_SIZE - len(self._retry), 1)
                with self._lock:
                    size = min(len(self._buffer), room)
                    batch = [self._buffer.popleft() for _ in range(size)]
                batch = self._retry + batch
                self._retry = []
                if not batch:
                    return taken
                taken += len(batch)
                self._write_batch(batch)
                if size < room:
                    return taken

    def _write_batch(self, batch: list[_Put | _SessionUpdate]) -> None:
        try:
            if self.background:
                close_old_connections()  # our own thread: like a request's start and end
            operations, sessions = self._operations(batch)
            if not operations:
                return
            results = services.state_bulk(
                operations=operations, atomic=False, source=SOURCE, actor=ACTOR
            )
        except Exception as exc:  # noqa: BLE001 - the store is down: count, log, go on
            self._backoff = min(max(2 * self._backoff, 2.0), BACKOFF_MAX_SECS)
            self._failed(len(batch), exc)
            if self.background:
                connection.close()  # a broken connection is not reused
            return
        finally:
            if self.background:
                close_old_connections()
        self._backoff = 0.0
        written = failed = 0
        for result in results:
            if result.error is None:
                written += 1
            elif isinstance(result.error, VersionConflict) and result.index in sessions:
                update = sessions[result.index]
                update.attempts += 1
                if update.attempts < MAX_SESSION_ATTEMPTS:
                    self._retry.append(update)
                    with self._lock:
                        self.counters["conflicts"] += 1
                else:
                    failed += 1
            else:
                failed += 1
        with self._lock:
            c = self.counters
            c["written"] += written
            c["batches"] += 1
            c["operations"] += len(operations)
            self.last_batch_size = len(operations)
            self.max_batch_size = max(self.max_batch_size, len(operations))
        if failed:
            self._failed(failed, next(r.error for r in results if r.error is not None))

    def _failed(self, count: int, exc: BaseException | None) -> None:
        with self._lock:
            self.counters["failed"] += count
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_SECS:
            self._last_failure_log = now
            # The exception's type and message only: never a record, which holds request data.
            logger.warning("tracking: %d records not written (%s: %s); requests unaffected",
                           count, type(exc).__name__, exc)  # fmt: skip

    def _operations(
        self, batch: list[_Put | _SessionUpdate]
    ) -> tuple[list[dict[str, Any]], dict[int, _SessionUpdate]]:
        """Return the bulk operations for a batch, and which of them are session updates."""
        puts: dict[str, _Put] = {}
        merged: dict[str, _SessionUpdate] = {}
        for item in batch:
            if isinstance(item, _Put):
                puts[item.key] = item
            elif (known := merged.get(item.key)) is None:
                merged[item.key] = _SessionUpdate(
                    key=item.key, fields=dict(item.fields), heartbeat=item.heartbeat,
                    attempts=item.attempts,
                )  # fmt: skip
            else:
                known.fields.update(item.fields)
                known.heartbeat = known.heartbeat and item.heartbeat
                known.attempts = max(known.attempts, item.attempts)
        operations = [
            {"op": "set", "key": p.key, "value": p.value, "ttl": p.ttl} for p in puts.values()
        ]
        sessions: dict[int, _SessionUpdate] = {}
        current = selectors.sessions_get(keys=list(merged)) if merged else {}
        for key, update in merged.items():
            entry = current.get(key)
            value = session_value(entry.value if entry is not None else None, update.fields)
            if entry is not None and update.heartbeat and _heartbeat_only(entry.value, value):
                with self._lock:
                    self.counters["coalesced"] += 1
                continue
            sessions[len(operations)] = update
            operations.append({
                "op": "set", "key": key, "value": value, "ttl": settings.STATE_SESSION_TTL_SECS,
                "expected_version": entry.version if entry is not None else 0,
            })  # fmt: skip
        return operations, sessions


def session_value(current: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """Return the session record `current` with `fields` merged in (all four fields present)."""
    value: dict[str, Any] = dict.fromkeys(SESSION_FIELDS)
    value["active"] = True
    if isinstance(current, dict):
        value.update({k: v for k, v in current.items() if k in SESSION_FIELDS})
    value.update(fields)
    return value


def _heartbeat_only(stored: Any, value: dict[str, Any]) -> bool:
    """Whether `value` only moves last_heartbeat of `stored`, which is younger than the period."""
    if not isinstance(stored, dict):
        return False
    others_same = all(stored.get(k) == value[k] for k in SESSION_FIELDS if k != "last_heartbeat")
    last = parse_iso(stored.get("last_heartbeat"))
    if not others_same or last is None:
        return False
    age = (datetime.now(UTC) - last).total_seconds()
    return age < settings.STATE_SESSION_HEARTBEAT_WRITE_SECS


def _serving_loop() -> asyncio.AbstractEventLoop | None:
    """Return the server's event loop, seen from a request thread or from the loop itself."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
        return (
            loop
            if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", 0) == os.getpid()
            else None
        )


tracker = Tracker()


# --- what the middleware and the consumer call ----------------------------------------------


def request_started(
    *, correlation_id: str, method: str, uri: str, headers: dict[str, str], started_at: str
) -> None:
    """Record `request:<id>` (the caller has redacted uri and headers)."""
    tracker.put(
        key=request_key(correlation_id),
        value={"method": method, "uri": uri, "started_at": started_at, "headers": headers},
        ttl=settings.STATE_REQUEST_TTL_SECS,
    )


def request_finished(
    *,
    correlation_id: str,
    status: int,
    duration_ms: float,
    username: str | None,
    started_at: str,
) -> None:
    """Record `request:<id>:completion`, and the user's session when authenticated."""
    tracker.put(
        key=request_key(correlation_id) + ":completion",
        value={"completed_at": now_iso(), "status": status, "duration_ms": duration_ms},
        ttl=settings.STATE_REQUEST_TTL_SECS,
    )
    if username:
        tracker.update_session(
            username=username,
            fields={"last_request": started_at, "correlation_id": correlation_id, "active": True},
            heartbeat=False,
        )


def session_heartbeat(*, username: str) -> None:
    """Refresh `last_heartbeat` of the user's session (coalesced to one write a period)."""
    tracker.update_session(
        username=username, fields={"active": True, "last_heartbeat": now_iso()}, heartbeat=True
    )


def flush() -> int:
    """Write everything buffered now, in the calling thread; return the records taken."""
    return tracker.flush()


def stats() -> dict[str, int]:
    """Return the tracking counters: records written, batches, dropped, failed, and more."""
    return tracker.stats()


def buffer_state() -> dict[str, int]:
    """Return the tracking gauges: records buffered now, last and largest batch sizes."""
    return tracker.buffer_state()


# --- the worker's job -----------------------------------------------------------------------


def sessions_deactivate_idle(*, now: datetime | None = None, batch_size: int = 500) -> int:
    """Turn sessions with no heartbeat or request for STATE_SESSION_IDLE_SECS to active: false."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.STATE_SESSION_IDLE_SECS)
    total = 0
    after = ""
    while True:
        page = selectors.active_sessions(after=after, limit=batch_size)
        if not page:
            return total
        after = page[-1].key
        operations = []
        for entry in page:
            seen = [parse_iso(entry.value.get(k)) for k in ("last_heartbeat", "last_request")]
            seen = [moment for moment in seen if moment is not None]
            if seen and max(seen) >= cutoff:
                continue
            remaining = (entry.expires_at - now).total_seconds() if entry.expires_at else None
            operations.append({
                "op": "set", "key": entry.key, "value": {**entry.value, "active": False},
                "ttl": max(1, math.ceil(remaining)) if remaining is not None else None,
                # A heartbeat that lands meanwhile wins: this write then fails, as it should.
                "expected_version": entry.version,
            })  # fmt: skip
        if operations:
            results = services.state_bulk(
                operations=operations, atomic=False, source=SOURCE, actor="worker"
            )
            total += sum(1 for result in results if result.error is None)
        if len(page) < batch_size:
            return total
