"""`watch()`: the event stream as an iterator that resumes by revision and never misses a change.

The watch remembers the last revision it saw (from a change or a `progress` message). When the
connection drops, the server cuts it off as `lagged` (close 4008), or it stays silent for
longer than twice the server's progress interval, the watch reconnects with
`since_revision` set to that revision: the server replays what was missed from its event
log, and anything at or below the revision is dropped, so the caller sees every change once,
in order. A restore (`state_reset`) or a resume point older than the log
(`revision_compacted`) raises `ResyncRequired`: only a fresh listing can continue from there.
"""

import asyncio
import json
import logging
import random
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from . import errors
from .client import API_PATH
from .models import Change, Progress

logger = logging.getLogger(__name__)

LAGGED_CLOSE_CODE = 4008
UNAUTHENTICATED_CLOSE_CODE = 4401
INVALID_CLOSE_CODE = 4400


class _Reconnect(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Cursor:
    """The last revision seen, and what each server message means for it."""

    def __init__(self, since_revision: int | None) -> None:
        self.revision = since_revision

    def handle(self, message: Any) -> Change | Progress | None:
        """Return the change to deliver (or progress made), None to skip; raise to stop."""
        if not isinstance(message, dict):
            raise errors.ProtocolError(f"Unexpected stream message: {message!r}")
        kind, data = message.get("type"), message.get("data") or {}
        if kind == "state_change":
            change = Change.from_json(data)
            if self.revision is not None and change.revision <= self.revision:
                return None  # replayed after a reconnect: already delivered
            self.revision = change.revision
            return change
        if kind == "progress":
            if self.revision is None or data["revision"] > self.revision:
                self.revision = data["revision"]
                return Progress(self.revision)
            return None
        if kind == "subscribed":
            if self.revision is None:
                self.revision = data["revision"]
            return None
        if kind == "state_reset":
            raise errors.ResyncRequired(
                f"The store was restored from snapshot {data.get('snapshot_id')} at revision "
                f"{data['revision']}; list again and watch from the listing's revision.",
                reason="state_reset",
                revision=data["revision"],
                snapshot_id=data.get("snapshot_id"),
            )
        if kind == "error":
            self._error(data)
        return None  # pong, or a message type newer than this client

    def _error(self, data: dict[str, Any]) -> None:
        code, message = data.get("code", ""), data.get("message", "")
        if code in ("lagged", "send_failed"):
            # Cut off (close 4008 follows); the log replays from our revision on reconnect.
            raise _Reconnect(code)
        if code == "revision_compacted":
            raise errors.ResyncRequired(
                f"Events after revision {self.revision} are no longer kept (oldest: "
                f"{data.get('oldest_revision')}); list again and watch from the listing's "
                "revision.",
                reason="revision_compacted",
                oldest_revision=data.get("oldest_revision"),
            )
        if code == "validation_error" and "revision" in data:
            # since_revision is ahead of the store: it was replaced by an older copy.
            raise errors.ResyncRequired(message, reason="revision_ahead", revision=data["revision"])
        if code in errors.ERRORS:
            details = {k: v for k, v in data.items() if k not in ("code", "message")}
            raise errors.api_error(code, message, details=details)
        logger.warning("statehub stream error %s: %s", code, message)


def _url(client, prefixes: list[str], since: int | None) -> str:
    base = client.base_url
    scheme = "wss" if base.startswith("https:") else "ws"
    query = {"prefixes": ",".join(prefixes)}
    if since is not None:
        query["since_revision"] = str(since)
    return f"{scheme}:{base.split(':', 1)[1]}{API_PATH}/events?{urlencode(query)}"


def _close_reason(exc: ConnectionClosed) -> str:
    """Say why the server closed; raise when reconnecting cannot help."""
    code = exc.rcvd.code if exc.rcvd is not None else None
    if code == UNAUTHENTICATED_CLOSE_CODE:
        raise errors.Unauthenticated("The stream closed the connection: not authenticated.")
    if code == INVALID_CLOSE_CODE:
        raise errors.ValidationError("The stream refused the subscription.")
    return "lagged" if code == LAGGED_CLOSE_CODE else "closed"


def _refused(exc: Exception) -> str:
    """Say why a connection attempt failed; raise when reconnecting cannot help."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 401:
            raise errors.Unauthenticated("The stream refused the token.", status=status)
        if status == 403:
            raise errors.PermissionDenied("The stream refused the connection.", status=status)
    return "refused"


_CONNECT_ERRORS = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)


class _Backoff:
    def __init__(self) -> None:
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return min(5.0, 0.1 * 2 ** (self.failures - 1)) * (0.5 + random.random() / 2)


class _Base:
    def __init__(
        self,
        client,
        prefixes: list[str],
        since_revision: int | None,
        *,
        progress_interval: float,
        include_progress: bool = False,
    ) -> None:
        if isinstance(prefixes, str):
            raise TypeError("prefixes is a list of strings")
        self.client = client
        self.prefixes = list(prefixes)
        self.silence_timeout = 2 * progress_interval
        self.include_progress = include_progress
        self.disconnects: Counter[str] = Counter()  # why the watch had to reconnect
        self._cursor = _Cursor(since_revision)
        self._backoff = _Backoff()
        self._connected = False  # once: from then on it reconnects without giving up
        self._closed = False

    @property
    def revision(self) -> int | None:
        """The last revision seen: resume from here with `since_revision`."""
        return self._cursor.revision

    def _options(self) -> dict[str, Any]:
        return {
            "additional_headers": {"Authorization": f"Bearer {self.client.token}"},
            "open_timeout": self.client.timeout,
            "close_timeout": 1,
            "max_size": None,  # a change carries values up to the server's own limit, twice
        }

    def _give_up(self, exc: Exception) -> bool:
        """Whether a failed first connection is reported rather than retried."""
        return not self._connected and self._backoff.failures >= self.client.retry.retries

    def _deliver(self, text: str | bytes) -> Change | Progress | None:
        try:
            message = json.loads(text)
        except ValueError as exc:
            raise errors.ProtocolError("The stream sent something that is not JSON.") from exc
        item = self._cursor.handle(message)
        if isinstance(item, Progress) and not self.include_progress:
            return None
        return item


class Watch(_Base):
    """A blocking iterator of `Change`s; `close()` (from any thread) ends it."""

    _ws = None

    def __iter__(self) -> "Watch":
        return self

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            self._ws.close()

    def __next__(self) -> Change | Progress:
        while True:
            if self._closed:
                raise StopIteration
            if self._ws is None:
                self._connect()
                continue
            try:
                text = self._ws.recv(timeout=self.silence_timeout)
                item = self._deliver(text)
            except TimeoutError:
                self._drop("silence")
                continue
            except ConnectionClosed as exc:
                if self._closed:
                    raise StopIteration from None
                self._drop(self._reason(exc))
                continue
            except _Reconnect as exc:
                self._drop(exc.reason)
                continue
            except errors.StatehubError:
                self.close()
                raise
            if item is not None:
                return item

    def _reason(self, exc: ConnectionClosed) -> str:
        try:
            return _close_reason(exc)
        except errors.StatehubError:
            self.close()
            raise

    def _drop(self, reason: str) -> None:
        self.disconnects[reason] += 1
        logger.info("statehub watch reconnecting (%s) from revision %s", reason, self.revision)
        ws, self._ws = self._ws, None
        if ws is not None:
            threading.Thread(target=ws.close, daemon=True).start()  # may wait for a dead peer

    def _connect(self) -> None:
        from websockets.sync.client import connect

        url = _url(self.client, self.prefixes, self.revision)
        try:
            self._ws = connect(url, **self._options()).__enter__()  # the form every version takes
        except _CONNECT_ERRORS as exc:
            try:
                reason = _refused(exc)
            except errors.StatehubError:
                self.close()
                raise
            if self._give_up(exc):
                self.close()
                raise errors.TransportError(f"Could not open the event stream: {exc}") from exc
            self.disconnects[reason] += 1
            time.sleep(self._backoff.next())
            return
        self._connected = True
        self._backoff.failures = 0
        if self._closed:  # closed by another thread while connecting
            self._ws.close()


class AsyncWatch(_Base):
    """An async iterator of `Change`s: `async for change in client.watch(...)`."""

    _ws = None

    def __aiter__(self) -> "AsyncWatch":
        return self

    async def __aenter__(self) -> "AsyncWatch":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()

    async def __anext__(self) -> Change | Progress:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._ws is None:
                await self._connect()
                continue
            try:
                text = await asyncio.wait_for(self._ws.recv(), self.silence_timeout)
                item = self._deliver(text)
            except TimeoutError:
                self._drop("silence")
                continue
            except ConnectionClosed as exc:
                if self._closed:
                    raise StopAsyncIteration from None
                try:
                    reason = _close_reason(exc)
                except errors.StatehubError:
                    await self.aclose()
                    raise
                self._drop(reason)
                continue
            except _Reconnect as exc:
                self._drop(exc.reason)
                continue
            except errors.StatehubError:
                await self.aclose()
                raise
            if item is not None:
                return item

    def _drop(self, reason: str) -> None:
        self.disconnects[reason] += 1
        logger.info("statehub watch reconnecting (%s) from revision %s", reason, self.revision)
        ws, self._ws = self._ws, None
        if ws is not None:
            task = asyncio.get_running_loop().create_task(ws.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    async def _connect(self) -> None:
        from websockets.asyncio.client import connect

        url = _url(self.client, self.prefixes, self.revision)
        try:
            self._ws = await connect(url, **self._options())
        except _CONNECT_ERRORS as exc:
            try:
                reason = _refused(exc)
            except errors.StatehubError:
                self._closed = True
                raise
            if self._give_up(exc):
                self._closed = True
                raise errors.TransportError(f"Could not open the event stream: {exc}") from exc
            self.disconnects[reason] += 1
            await asyncio.sleep(self._backoff.next())
            return
        self._connected = True
        self._backoff.failures = 0


_closing: set[asyncio.Task] = set()  # keep close tasks alive until they finish
