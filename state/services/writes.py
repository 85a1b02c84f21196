"""The write transaction: store revisions, audit events, and the SQLite write queue."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from .. import events
from ..exceptions import StateError
from ..models import StateEvent

# --- the write transaction ----------------------------------------------------------------

# Within one process, SQLite writers queue on this lock rather than in SQLite's busy handler,
# which polls with sleeps of up to 100 ms and so turns a short queue into long tail latency.
_SQLITE_WRITE_LOCK = threading.Lock()


class _Transaction:
    """One write transaction: allocates store revisions and records events."""

    def __init__(self, *, actor: str) -> None:
        self.actor = actor
        self.now = timezone.now()
        self._spare: int | None = _bump_revision()  # takes the store lock first, always

    def next_revision(self) -> int:
        if self._spare is not None:
            revision, self._spare = self._spare, None
            return revision
        return _bump_revision()

    @property
    def unused(self) -> bool:
        return self._spare is not None

    def record(
        self,
        *,
        revision: int,
        op: str,
        key: str,
        old_value: Any,
        new_value: Any,
        version: int,
        source: str,
    ) -> None:
        """Write the audit event for one change and publish it after commit."""
        StateEvent.objects.create(
            revision=revision,
            key=key,
            op=op,
            old_value=old_value,
            new_value=new_value,
            version=version,
            source=source,
            actor=self.actor,
            timestamp=self.now,
        )
        events.publish(
            events.StateChange(
                op=op,  # type: ignore[arg-type]
                key=key,
                old_value=old_value,
                new_value=new_value,
                version=version,
                revision=revision,
                timestamp=self.now.timestamp(),
                source=source,
            )
        )


def _bump_revision() -> int:
    """Increment the store revision; the row lock it takes is held until commit."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE state_storerevision SET revision = revision + 1 WHERE id = 1 RETURNING revision"
        )
        row = cursor.fetchone()
    if row is None:
        raise StateError("The store revision row is missing; run migrations.")
    return row[0]


@contextmanager
def _write(*, actor: str) -> Iterator[_Transaction]:
    queue = (
        _SQLITE_WRITE_LOCK
        if connection.vendor == "sqlite" and not connection.in_atomic_block
        else nullcontext()
    )
    with queue, transaction.atomic():
        tx = _Transaction(actor=actor)
        yield tx
        if tx.unused:
            # Nothing changed: give the revision back so the sequence stays gapless.
            transaction.set_rollback(True)


@contextmanager
def _record_write() -> Iterator[None]:
    """A transaction that writes records but no store change (so takes no revision)."""
    queue = (
        _SQLITE_WRITE_LOCK
        if connection.vendor == "sqlite" and not connection.in_atomic_block
        else nullcontext()
    )
    with queue, transaction.atomic():
        yield
