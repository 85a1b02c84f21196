"""Change events: the doorbell the write path rings after commit, and the stream's messages.

`publish()` only registers an on-commit callback; `broadcast()` is the only code that talks
to the channel layer. The channel layer is a doorbell (a revision number): the event log in
the database is the truth, and the stream builds its `StateChange`/`StateReset` messages from
log rows, so a lost or late ring is repaired by whoever reads the log.
"""

import asyncio
import logging
import os
import threading
from dataclasses import asdict, dataclass
from functools import partial, update_wrapper
from typing import TYPE_CHECKING, Any, Literal

from asgiref.sync import SyncToAsync, async_to_sync
from django.conf import settings
from django.db import transaction

if TYPE_CHECKING:
    from .models import StateEvent

logger = logging.getLogger(__name__)

# The one group every server process listens on for news of changes.
CHANGES_GROUP = "state.changes"
DOORBELL_TYPE = "state.revision"


@dataclass(frozen=True, slots=True)
class StateChange:
    op: Literal["set", "delete", "expire", "metadata"]
    key: str
    old_value: Any
    new_value: Any
    version: int
    revision: int
    timestamp: float
    source: str

    def as_message(self) -> dict[str, Any]:
        """Return the WebSocket `state_change` message for this change."""
        return {"type": "state_change", "data": asdict(self)}


@dataclass(frozen=True, slots=True)
class StateReset:
    snapshot_id: int | None
    revision: int
    op: Literal["restore"] = "restore"

    def as_message(self) -> dict[str, Any]:
        """Return the WebSocket `state_reset` message for this restore."""
        return {
            "type": "state_reset",
            "data": {"snapshot_id": self.snapshot_id, "revision": self.revision},
        }


Event = StateChange | StateReset

# The highest revision this thread published and has not rung the doorbell for yet. On-commit
# callbacks run in the committing thread, so the first one of a commit rings once for all the
# transactions it commits (a writer inside an outer transaction publishes at each write).
_unrung = threading.local()


def publish(revision: int) -> None:
    """Ring the doorbell for `revision` (a transaction's last) once the transaction commits.

    Only the number goes out: listeners read the changes themselves from the event log, so
    the write path never builds or decodes a value for the broadcast.
    """
    if settings.STATE_BROADCAST_CHANGES:
        _unrung.revision = max(getattr(_unrung, "revision", 0), revision)
        # robust: a broadcast failure is logged, never turned into a failed write. (Django
        # names the callback in that log line: a bare partial has no __qualname__, so the
        # logging itself raised and the failure escaped into the write after its commit.)
        transaction.on_commit(update_wrapper(partial(broadcast, revision), broadcast), robust=True)


def broadcast(revision: int) -> None:
    """Ring the doorbell: tell every server process that the store moved on to `revision`.

    The message is tiny on purpose: listeners read the change itself from the event log, so
    the channel layer never carries values and a lost or reordered message costs nothing.
    Only the first callback of a commit rings; the others find nothing left to ring for.
    (A revision left over from a rolled-back transaction is rung with the next commit: the
    number is only a hint, listeners always read the log from where they are.)
    """
    unrung = getattr(_unrung, "revision", 0)
    if unrung < revision:
        return
    _unrung.revision = 0
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is not None:
        _ring(layer, {"type": DOORBELL_TYPE, "revision": unrung})


def _ring(layer, message: dict[str, Any]) -> None:
    """Send `message` to the changes group without making the committing thread wait.

    The writer may still hold the SQLite write lock here (on-commit hooks run inside the
    `_write` block), so waiting for a hop to the busy event loop serialized that wait into
    every write: 7% of a loaded server's samples, measured with py-spy.
    """
    try:
        running = asyncio.get_running_loop()  # committed from code on the loop
    except RuntimeError:
        running = None
    if running is not None:
        running.create_task(layer.group_send(CHANGES_GROUP, message))
        return
    # A thread started by sync_to_async (a request, a consumer's database call): asgiref
    # records the event loop that awaits it; hand the send to that loop and move on.
    # (The record outlives its loop in a reused thread: only a running loop will do.)
    local = SyncToAsync.threadlocal
    loop = getattr(local, "main_event_loop", None)
    if (
        loop is not None
        and loop.is_running()
        and getattr(local, "main_event_loop_pid", None) == os.getpid()
    ):
        send = layer.group_send(CHANGES_GROUP, message)
        asyncio.run_coroutine_threadsafe(send, loop).add_done_callback(_log_failure)
        return
    # A command or the worker: no loop of ours to hand it to.
    async_to_sync(layer.group_send)(CHANGES_GROUP, message)


def _log_failure(done) -> None:
    if not done.cancelled() and done.exception() is not None:
        logger.warning("Ringing the change doorbell failed: %r", done.exception())


def event_from_row(row: "StateEvent") -> Event:
    """Return the event a log row records (a restore row becomes one StateReset)."""
    if row.op == "restore":
        snapshot_id = (row.new_value or {}).get("snapshot_id")
        return StateReset(snapshot_id=snapshot_id, revision=row.revision)
    return StateChange(
        op=row.op,  # type: ignore[arg-type]
        key=row.key,
        old_value=row.old_value,
        new_value=row.new_value,
        version=row.version,
        revision=row.revision,
        timestamp=row.timestamp.timestamp(),
        source=row.source,
    )
