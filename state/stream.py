"""The event stream's fan-out: one log follower per server process, one outbox per connection.

A `Hub` (one per event loop, so one per daphne process) reads new event-log rows once — when
the channel layer rings the doorbell, or every STATE_STREAM_POLL_INTERVAL_SECS, which is how
writes by other processes reach the embedded default — serializes each message once, and
hands the frame to every local `Subscription` that may see it. The channel layer carries no
data, so a dropped, late or reordered doorbell only delays delivery until the next one or
the next poll. A subscription behind the hub (new, or resuming from `since_revision`)
replays from the log by itself, then joins the hub's live feed with no gap and no overlap.

No message is ever skipped: every server runs with a WebSocket message limit of
`max_message_bytes()` (derived from the store's own limits), and a message that still cannot
be sent ends the connection with an error naming the last revision delivered (close 4008),
exactly as for a subscriber that lagged, so the client resumes from it.
"""

import asyncio
import gc
import json
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from . import access, events, metrics, rules, selectors
from .models import StateEvent

logger = logging.getLogger(__name__)

# Closed after a `lagged` or `send_failed` error: reconnect with since_revision=last_revision.
LAGGED_CLOSE_CODE = 4008
UNAUTHENTICATED_CLOSE_CODE = 4401
# At most this many prefixes per connection (and per message), each at most this long.
MAX_PREFIXES = 100
MAX_PREFIX_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Frame:
    """One event as sent on the wire, serialized once for every connection."""

    revision: int
    key: str
    reset: bool
    text: str


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def max_message_bytes() -> int:
    """Return the size of the largest message the stream sends: every server's message limit.

    A change carries its old and new value. Each is either a value, at most
    STATE_MAX_VALUE_BYTES as `rules.value_size` measures it with this very encoder (compact
    UTF-8 JSON), so embedding it adds no byte: its escapes are already counted; or a metadata
    map, counted with every character at its worst, a control character, which this encoder
    (ensure_ascii=False) writes as a six-byte escape. The envelope is measured by encoding its
    largest form. The largest control messages list every prefix at its worst.
    """
    worst = "\x01"
    change = events.StateChange(
        op="metadata", key="k" * 256, old_value=0, new_value=0, version=rules.INT64_MIN,
        revision=rules.INT64_MIN, timestamp=-1.7976931348623157e308,
        source=worst * settings.STATE_MAX_SOURCE_LENGTH,
    )  # fmt: skip
    envelope = _size(change.as_message()) - 2  # without the two zeros standing for the values
    entry = _size({worst * settings.STATE_MAX_METADATA_KEY_LENGTH:
                   worst * settings.STATE_MAX_METADATA_VALUE_LENGTH}) - 2  # fmt: skip
    entries = settings.STATE_MAX_METADATA_ENTRIES
    metadata = 2 + entries * entry + max(entries - 1, 0)
    side = max(settings.STATE_MAX_VALUE_BYTES, metadata)
    prefixes = [worst * MAX_PREFIX_LENGTH] * MAX_PREFIXES
    control = error_message("permission_denied", "m" * 200, prefixes=prefixes)  # our texts < 200
    subscribed = {"type": "subscribed", "data": {"prefixes": prefixes, "revision": rules.INT64_MIN}}
    return max(envelope + 2 * side, _size(control), _size(subscribed))


def _size(message: Any) -> int:
    return len(encode(message).encode())


def read_frames(
    *, after: int, upto: int | None = None, prefixes: list[str] | None = None, limit: int
) -> list[Frame]:
    """Return the frames of the log rows after `after` (see `selectors.events_after`)."""
    rows = selectors.events_after(after=after, upto=upto, prefixes=prefixes, limit=limit)
    return [
        Frame(
            revision=row.revision,
            key=row.key,
            reset=row.op == StateEvent.Op.RESTORE,
            text=encode(events.event_from_row(row).as_message()),
        )
        for row in rows
    ]


def error_message(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"type": "error", "data": {"code": code, "message": message, **details}}


def default_prefixes(user) -> list[str]:
    """Return the caller's own keys' prefixes and the public ones subscribed by default."""
    own = [f"{ns}:{user.get_username()}" for ns in settings.STATE_USER_NAMESPACES]
    return [*own, *settings.STATE_STREAM_DEFAULT_PREFIXES]


class SubscriptionError(Exception):
    """A client request the stream refuses; sent to the client as an `error` message."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = error_message(code, message, **details)


class Subscription:
    """What one connection is subscribed to, how far it has got, and what waits to be sent.

    `position`: every event up to it has been sent or queued (or is not this connection's).
    `sent`: the revision of the last event handed to the socket. `live`: the hub feeds the
    outbox; otherwise `run()` is replaying from the log until it reaches the hub.
    `lagged_at` / `failed_at`: set when the connection is cut off (outbox overflow / a send
    that failed) to the revision up to which everything it may see was delivered.
    """

    def __init__(
        self,
        *,
        hub: "Hub",
        user,
        prefixes: list[str],
        position: int,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int], Awaitable[None]],
    ) -> None:
        self.hub = hub
        self.user = user
        self.prefixes: list[str] = list(dict.fromkeys(prefixes))
        self._prefix_tuple = tuple(self.prefixes)
        self.position = position
        self.sent = 0
        self.live = False
        self.lagged_at: int | None = None
        self.failed_at: int | None = None
        self._send = send
        self._close = close
        # (revision or None for control messages, key or None when not about one key, text)
        self._outbox: deque[tuple[int | None, str | None, str]] = deque()
        self._wake = asyncio.Event()
        self._generation = 0
        self._last_sent_at = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._idle = False
        self._handed = False
        self.closing: int | None = None

    # --- what the hub calls (synchronously, on the loop) ---------------------------------

    def wants(self, frame: Frame) -> bool:
        return frame.reset or (
            frame.key.startswith(self._prefix_tuple) and access.can_read(self.user, frame.key)
        )

    def offer(self, frames: list[Frame], upto: int) -> list[Frame]:
        """Take the frames this connection may see; return those the hub may send right away.

        An idle connection (nothing queued, its sender asleep) hands its frames back for the
        hub to send in one pass: with a thousand connections, waking a thousand sender tasks
        per event costs more than the sends. A busy one queues them and is cut off if its
        outbox overflows.
        """
        if not self.live or self.cut_off or self.closing is not None:
            return []
        wanted = [f for f in frames if f.revision > self.position and self.wants(f)]
        self.position = max(self.position, upto)
        if not wanted:
            return []
        if len(wanted) > settings.STATE_STREAM_QUEUE_SIZE:
            self._lag(wanted[0].revision)
            return []
        if self._idle and not self._outbox and not self._handed:
            self.sent = wanted[-1].revision
            self._last_sent_at = time.monotonic()
            self._handed = True
            return wanted
        for frame in wanted:
            if len(self._outbox) >= settings.STATE_STREAM_QUEUE_SIZE:
                self._lag(frame.revision)
                return []
            self._outbox.append((frame.revision, None if frame.reset else frame.key, frame.text))
        self._wake.set()
        return []

    @property
    def cut_off(self) -> bool:
        return self.lagged_at is not None or self.failed_at is not None

    async def send_now(self, frames: list[Frame]) -> None:
        """Send frames handed out by `offer`; the sender holds back until they are out."""
        try:
            for frame in frames:
                if not await self._emit(frame.text, revision=frame.revision):
                    return
        finally:
            self._handed = False
            if not self._idle:
                self._wake.set()  # the sender is waiting on these frames, not asleep

    def _lag(self, revision: int) -> None:
        self.lagged_at = self._delivered(revision)
        metrics.STREAM_LAGGED.inc()
        self._outbox.clear()
        self._wake.set()

    def _delivered(self, undelivered: int | None) -> int:
        """Return the revision up to which everything this connection may see was delivered.

        `undelivered` is the event that could not go out (None: a control message), so
        everything before it and before the first event still queued was sent.
        """
        pending = [rev for rev, _, _ in self._outbox if rev is not None]
        if undelivered is not None:
            pending.append(undelivered)
        return min(pending) - 1 if pending else self.position

    # --- what the consumer calls ---------------------------------------------------------

    def queue(self, message: dict[str, Any]) -> None:
        """Send a control message after everything queued before it."""
        self._outbox.append((None, None, encode(message)))
        self._wake.set()

    def announce(self, *, revision: int | None = None) -> None:
        self.queue(
            {
                "type": "subscribed",
                "data": {
                    "prefixes": self.prefixes,
                    "revision": self.position if revision is None else revision,
                },
            }
        )

    async def start(
        self,
        *,
        prefixes: list[str] | None,
        since_revision: int | None,
        refused: list[dict[str, Any]] | None = None,
    ) -> None:
        """Announce the subscription, optionally replacing the defaults and resuming.

        `subscribed` is always the first message; the errors about what was refused (the
        `refused` ones the caller found, then ours) follow it.
        """
        errors = list(refused or [])
        if since_revision is not None:
            try:
                await self._check_since(since_revision)
            except SubscriptionError as exc:
                errors.append(exc.message)
                since_revision = None
        if prefixes is not None:
            allowed, refusal = self._allowed(prefixes)
            self._set_prefixes(allowed)
            errors += [refusal] if refusal else []
        if since_revision is not None:
            self._rewind(since_revision)
        self.announce()
        for error in errors:
            self.queue(error)

    async def subscribe(self, *, prefixes: list[str], since_revision: int | None) -> None:
        """Add readable prefixes (error for the rest); with `since_revision`, rewind to it."""
        if since_revision is not None:
            await self._check_since(since_revision)
        allowed, refusal = self._allowed(prefixes)
        if refusal:
            self.queue(refusal)
        if not allowed and since_revision is None:
            return
        if len(dict.fromkeys([*self.prefixes, *allowed])) > MAX_PREFIXES:
            raise SubscriptionError(
                "validation_error",
                f"A connection subscribes to at most {MAX_PREFIXES} prefixes; unsubscribe first.",
            )
        self._set_prefixes([*self.prefixes, *allowed])
        if since_revision is not None:
            self._rewind(since_revision)
        self.announce()

    def _allowed(self, prefixes: list[str]) -> tuple[list[str], dict[str, Any] | None]:
        """Return the prefixes the user may read in full, and the error naming the others."""
        forbidden = [p for p in prefixes if not access.can_read_prefix(self.user, p)]
        refusal = None
        if forbidden:
            refusal = error_message(
                "permission_denied",
                "You may not read every key under these prefixes.",
                prefixes=forbidden,
            )
        return [p for p in prefixes if p not in forbidden], refusal

    def unsubscribe(self, *, prefixes: list[str]) -> None:
        self._set_prefixes([p for p in self.prefixes if p not in prefixes])
        self._drop_unwanted()
        self.announce()

    def _drop_unwanted(self) -> None:
        """Forget queued changes this connection no longer subscribes to or may read."""
        self._outbox = deque(
            (revision, key, text)
            for revision, key, text in self._outbox
            if key is None
            or (key.startswith(self._prefix_tuple) and access.can_read(self.user, key))
        )

    def recheck(self, user) -> None:
        """Adopt a fresh copy of the user: drop prefixes no longer readable; cut off if gone."""
        if user is None:
            self.queue(error_message("unauthenticated", "This user is no longer active."))
            self.closing = UNAUTHENTICATED_CLOSE_CODE
            self._wake.set()
            return
        self.user = user
        revoked = [p for p in self.prefixes if not access.can_read_prefix(user, p)]
        if revoked:
            self._set_prefixes([p for p in self.prefixes if p not in revoked])
        self._drop_unwanted()
        if revoked:
            self.queue(
                error_message(
                    "permission_denied", "Access to these prefixes was revoked.", prefixes=revoked
                )
            )

    def _set_prefixes(self, prefixes: list[str]) -> None:
        self.prefixes = list(dict.fromkeys(prefixes))
        self._prefix_tuple = tuple(self.prefixes)
        # A replay batch in flight was read with the old prefixes: read it again.
        self._generation += 1

    async def _check_since(self, since: int) -> None:
        current, oldest = await database_sync_to_async(_log_bounds)()
        if since > current:
            raise SubscriptionError(
                "validation_error",
                f"since_revision {since} is ahead of the store revision {current}.",
                revision=current,
            )
        oldest = current + 1 if oldest is None else oldest
        if since < oldest - 1:
            raise SubscriptionError(
                "revision_compacted",
                f"Events after revision {since} are no longer in the log; list and resubscribe.",
                oldest_revision=oldest,
            )
        if since < self.sent:
            raise SubscriptionError(
                "validation_error",
                f"This connection already delivered revision {self.sent}; to resume from "
                f"{since}, reconnect with ?since_revision={since}.",
                revision=self.sent,
            )

    def _rewind(self, since: int) -> None:
        # Events queued but not sent after `since` are read again from the log.
        self._outbox = deque(item for item in self._outbox if item[0] is None or item[0] <= since)
        self.position = since
        self.live = False
        self._generation += 1
        self._wake.set()

    # --- the connection's one sender ------------------------------------------------------

    async def run(self) -> None:
        """Send queued messages and replays in order; progress when idle; cut off when lagged."""
        while True:
            if self._handed:
                # The hub is sending frames this connection took; anything else goes after.
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.lagged_at is not None:
                await self._cut_off(
                    "lagged",
                    "This connection fell too far behind; resume from last_revision.",
                    self.lagged_at,
                )
                return
            if self.failed_at is not None:
                await self._cut_off(
                    "send_failed",
                    "A message could not be sent on this connection; resume from last_revision.",
                    self.failed_at,
                )
                return
            if self.closing is not None and not self._outbox:
                await self._close(self.closing)
                return
            if self._outbox:
                revision, _, text = self._outbox.popleft()
                if revision is not None:
                    self.sent = revision
                await self._emit(text, revision=revision)
                continue
            if not self.live:
                await self._replay()
                continue
            idle_for = settings.STATE_PROGRESS_INTERVAL_SECS - (
                time.monotonic() - self._last_sent_at
            )
            if idle_for <= 0:
                await self._emit(encode({"type": "progress", "data": {"revision": self.position}}))
                continue
            self._wake.clear()
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(idle_for, self._tick)
            self._idle = True
            try:
                await self._wake.wait()
            finally:
                self._idle = False

    def _tick(self) -> None:
        self._timer = None
        self._wake.set()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _emit(self, text: str, *, revision: int | None = None) -> bool:
        """Send one message (about `revision`); if it fails, cut the connection off."""
        self._last_sent_at = time.monotonic()
        try:
            await self._send(text)
        except Exception:
            # The server refused it (larger than its message limit) or the connection broke.
            # Skipping it would leave a gap that a later `progress` papers over.
            self.failed_at = self._delivered(revision)
            self._outbox.clear()
            self._wake.set()
            logger.warning(
                "Sending a %d-byte message failed; closing the connection at revision %d.",
                len(text.encode()), self.failed_at, exc_info=True,
            )  # fmt: skip
            return False
        metrics.STREAM_FRAMES_SENT.inc()
        return True

    async def _cut_off(self, code: str, message: str, last_revision: int) -> None:
        """Send the error naming where to resume from, then close with 4008."""
        try:
            await self._send(encode(error_message(code, message, last_revision=last_revision)))
            metrics.STREAM_FRAMES_SENT.inc()
            await self._close(LAGGED_CLOSE_CODE)
        except Exception:  # noqa: BLE001 - the connection is gone; the client resumes anyway
            logger.info("Could not tell a cut-off connection where to resume.", exc_info=True)

    async def _replay(self) -> None:
        """Send one batch from the log, or go live once the hub has nothing newer."""
        target = self.hub.revision
        if self.position >= target:
            self.live = True
            return
        generation = self._generation
        limit = settings.STATE_STREAM_BATCH_SIZE
        frames = await database_sync_to_async(read_frames)(
            after=self.position, upto=target, prefixes=self.prefixes, limit=limit
        )
        for frame in frames:
            if generation != self._generation or self.cut_off:
                return
            if self.wants(frame):
                self.sent = frame.revision
                if not await self._emit(frame.text, revision=frame.revision):
                    return
        if generation == self._generation:
            self.position = frames[-1].revision if len(frames) == limit else target


def _fresh_users(ids: list[int]) -> dict:
    users = selectors.active_users(ids=ids)
    for user in users.values():
        access.readable_prefixes(user)  # loads the rules now, off the event loop
    return users


def _log_bounds() -> tuple[int, int | None]:
    return selectors.store_revision(), selectors.event_log_oldest_revision()


class Hub:
    """Follows the event log for one process and fans its frames out to local subscriptions."""

    def __init__(self) -> None:
        self.revision = 0
        self.subscriptions: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._opening = 0
        self._ready = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        self.revision = await database_sync_to_async(selectors.store_revision)()
        self._tasks = [
            asyncio.create_task(self._follow_log()),
            asyncio.create_task(self._poll()),
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._freeze_heap()),
            asyncio.create_task(self._recheck_access()),
        ]

    async def open(self, *, user, send, close) -> Subscription:
        """Register a subscription to the default prefixes, starting at the store revision."""
        self._opening += 1
        try:
            await self._ready
            revision = await database_sync_to_async(selectors.store_revision)()
        finally:
            self._opening -= 1
        subscription = Subscription(
            hub=self, user=user, prefixes=default_prefixes(user), position=revision,
            send=send, close=close,
        )  # fmt: skip
        self.subscriptions.add(subscription)
        metrics.STREAM_SUBSCRIBERS.set(len(self.subscriptions))
        return subscription

    def close(self, subscription: Subscription) -> None:
        subscription.cancel()
        self.subscriptions.discard(subscription)
        metrics.STREAM_SUBSCRIBERS.set(len(self.subscriptions))
        if not self.subscriptions and not self._opening:
            self.stop()

    @property
    def failed(self) -> bool:
        return self._ready.done() and (
            self._ready.cancelled() or self._ready.exception() is not None
        )

    def stop(self) -> None:
        if _hubs.get(self._loop()) is self:
            del _hubs[self._loop()]
        self._ready.cancel()
        for task in self._tasks:
            task.cancel()

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def _follow_log(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._read_new()
            except Exception:
                logger.exception("Reading the event log failed; retrying on the next poll.")

    async def _read_new(self) -> None:
        limit = settings.STATE_STREAM_BATCH_SIZE
        while True:
            frames = await database_sync_to_async(read_frames)(after=self.revision, limit=limit)
            if not frames:
                return
            upto = frames[-1].revision
            ready = [(sub, sub.offer(frames, upto)) for sub in list(self.subscriptions)]
            self.revision = upto
            for index, (subscription, wanted) in enumerate(ready):
                if wanted:
                    await subscription.send_now(wanted)  # a failure cuts that one off
                if index % 100 == 99:
                    # Let requests (writes) in between: fan-out must not starve the writers.
                    await asyncio.sleep(0)
            if len(frames) < limit:
                return

    async def _recheck_access(self) -> None:
        """Re-read each connection's user and rules, so revocations reach open connections."""
        while True:
            await asyncio.sleep(settings.STATE_STREAM_ACCESS_RECHECK_SECS)
            try:
                ids = list({sub.user.pk for sub in self.subscriptions})
                users = await database_sync_to_async(_fresh_users)(ids)
            except Exception:
                logger.exception("Re-checking stream access failed; keeping the last answer.")
                continue
            for subscription in list(self.subscriptions):
                subscription.recheck(users.get(subscription.user.pk))

    async def _freeze_heap(self) -> None:
        """Keep the long-lived heap out of the collector's full passes while many are connected.

        Measured with 1,000 connections on one process (bench/fanout.py): a full collection
        scanned every connection's objects every ~2 s and paused the loop for ~110 ms, which
        was the whole tail of delivery latency. Freezing moves the surviving heap to the
        permanent generation; redoing it when the connection count doubles, and every
        STATE_STREAM_GC_FREEZE_SECS, lets closed connections' cycles be collected in between.
        """
        interval = settings.STATE_STREAM_GC_FREEZE_SECS
        if interval <= 0:
            return
        frozen_count, frozen_at = 0, time.monotonic()
        while True:
            await asyncio.sleep(1)
            count = len(self.subscriptions)
            if count < 100:
                continue
            if count >= 2 * frozen_count or time.monotonic() - frozen_at >= interval:
                gc.unfreeze()
                gc.collect()
                gc.freeze()
                frozen_count, frozen_at = count, time.monotonic()

    async def _poll(self) -> None:
        while True:
            self._wake.set()
            await asyncio.sleep(settings.STATE_STREAM_POLL_INTERVAL_SECS)

    async def _listen(self) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        channel = None
        try:
            while True:
                try:
                    if channel is None:
                        channel = await layer.new_channel()
                        await layer.group_add(events.CHANGES_GROUP, channel)
                    await layer.receive(channel)
                    self._wake.set()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("The channel layer failed; following the log by polling.")
                    channel = None
                    await asyncio.sleep(settings.STATE_STREAM_POLL_INTERVAL_SECS)
        finally:
            if channel is not None:
                try:
                    await asyncio.shield(layer.group_discard(events.CHANGES_GROUP, channel))
                except Exception:  # noqa: BLE001 - best effort when the loop is going away
                    pass


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub]" = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """Return this process's hub (one per event loop), starting it on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.failed:
        hub = _hubs[loop] = Hub()
    return hub
