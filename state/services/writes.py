"""The write path's engine: the store transaction, the in-memory write batch, group commit.

Every change is made in a transaction whose first statement bumps the one store revision row.
That row lock serializes writers across every process, which is what makes revisions gapless
and strictly increasing in commit order; so nothing is read before it, and nothing else
needs a row lock.

Within the transaction, operations run against a `Batch`: it reads every entry they touch
with one query, applies them in order in memory (versions, preconditions, TTLs, repeats of a
key), and then writes with a constant number of statements: one delete, one upsert of the
entries, one insert of the events, one move of the revision. So a bulk of 1,000 costs what a
single write costs, plus the rows.

Concurrent single writes in one process share one such transaction (group commit): the first
writer to arrive leads and takes everyone queued behind it; each member of a group is still
all-or-nothing on its own (a failed precondition rolls back only that member, in memory),
and each is acknowledged only once the group has committed. A lone writer is never delayed.
"""

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from .. import crypto, events, rules, selectors
from ..exceptions import StateError
from ..models import StateEntry, StateEvent

Op = StateEvent.Op

# Within one process, SQLite writers queue on this lock rather than in SQLite's busy handler,
# which polls with sleeps of up to 100 ms and so turns a short queue into long tail latency.
_SQLITE_WRITE_LOCK = threading.Lock()

# Rows per INSERT/DELETE statement: a bulk of STATE_MAX_BULK_OPERATIONS is one statement each.
_ROWS_PER_STATEMENT = 1000
_ENTRIES = StateEntry._meta.db_table
_EVENTS = StateEvent._meta.db_table
_REVISION = "state_storerevision"


_BUMP = f"UPDATE {_REVISION} SET revision = revision + %s WHERE id = 1 RETURNING revision"


def _bump_revision(by: int = 1) -> int:
    """Move the store revision on by `by`; the row lock it takes is held until commit."""
    with connection.cursor() as cursor:
        cursor.execute(_BUMP, [by])
        return _revision_of(cursor)


def _revision_of(cursor) -> int:
    row = cursor.fetchone()
    if row is None:
        raise StateError("The store revision row is missing; run migrations.")
    return row[0]


@contextmanager
def _pipelined(enabled: bool = True) -> Iterator[None]:
    """Send the statements run inside together (PostgreSQL's pipeline mode), not one by one.

    Every round trip made while the store lock is held is time every other writer, in every
    process, waits. A write's BEGIN, lock and read go in one round trip, its writes in one
    more, then COMMIT. Results arrive when fetched, or all at the end. (COPY cannot run in a
    pipeline, so a batch written with COPY sends its statements one by one.)
    """
    if not enabled or connection.vendor != "postgresql":
        yield
        return
    connection.ensure_connection()
    # The errors of pipelined statements are raised when the pipeline syncs, outside Django's
    # cursor: wrapped here, so they arrive as Django's (a lost database is OperationalError).
    with connection.wrap_database_errors, connection.connection.pipeline():
        yield


@contextmanager
def _store_lock() -> Iterator[None]:
    """The process-level queue for SQLite writers (PostgreSQL queues on the revision row)."""
    if connection.vendor == "sqlite" and not connection.in_atomic_block:
        with _SQLITE_WRITE_LOCK:
            yield
    else:
        yield


class _Transaction:
    """One write transaction: allocates store revisions, in order, from the locked row."""

    def __init__(self, *, actor: str) -> None:
        self.actor = actor
        self.now = timezone.now()
        self.first = _bump_revision()  # takes the store lock first, always
        self.used = 0

    def next_revision(self) -> int:
        revision = self.first + self.used
        self.used += 1
        return revision

    def settle(self) -> None:
        """Leave the revision row at the last revision used (the first was taken already)."""
        if self.used > 1:
            _bump_revision(self.used - 1)


@contextmanager
def _write(*, actor: str) -> Iterator[_Transaction]:
    """A store transaction: revisions from `tx.next_revision()`, gapless, in commit order."""
    with _store_lock(), transaction.atomic():
        tx = _Transaction(actor=actor)
        yield tx
        if tx.used == 0:
            # Nothing changed: give the revision back so the sequence stays gapless.
            transaction.set_rollback(True)
        else:
            tx.settle()


@contextmanager
def _record_write() -> Iterator[None]:
    """A transaction that writes records but no store change (so takes no revision)."""
    with _store_lock(), transaction.atomic():
        yield


# --- the batch ----------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """An entry as the write path holds it; the value is kept as JSON text, decoded on demand."""

    key: str
    text: str
    metadata: dict[str, str]
    version: int
    revision: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    source: str
    size: int
    decoded: Any = field(default=rules.MISSING, repr=False)

    @property
    def value(self) -> Any:
        if self.decoded is rules.MISSING:
            self.decoded = crypto.unseal(self.key, json.loads(self.text))  # crypto: plain value
        return self.decoded

    def entry(self) -> StateEntry:
        """Return this row as the model instance callers get back."""
        return StateEntry(
            key=self.key, value=self.value, metadata=self.metadata, version=self.version,
            revision=self.revision, created_at=self.created_at, updated_at=self.updated_at,
            expires_at=self.expires_at, source=self.source, size=self.size,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Change:
    """One change to record: an event-log row, its values as JSON text (never decoded here)."""

    revision: int
    op: str
    key: str
    old_text: str | None
    new_text: str | None
    version: int
    source: str
    actor: str


class Batch:
    """What one transaction changes, applied in memory and written in a few statements."""

    def __init__(self, *, first_revision: int, now: datetime) -> None:
        self.now = now
        self.first_revision = first_revision
        self.actor = ""
        self.changes: list[Change] = []
        self._rows: dict[str, Row | None] = {}  # the store as the batch has it so far
        self._stored: set[str] = set()  # keys that have a row in the database
        self._undo: list[dict[str, Row | None]] = []  # one per open savepoint

    # --- reading --------------------------------------------------------------------------

    def load(self, keys: Iterator[str] | list[str] | set[str]) -> None:
        """Read every entry among `keys` not read yet, with one query a thousand keys."""
        wanted = list(dict.fromkeys(k for k in keys if k not in self._rows))
        if wanted:
            with _pipelined():
                self.loaded(wanted, _rows_of(_send_reads(wanted)))

    def loaded(self, keys: list[str], rows: list[Row]) -> None:
        """Hold `rows`, read for `keys` (a key without a row has no entry)."""
        for key in keys:
            self._rows[key] = None
        for row in rows:
            self._rows[row.key] = row
            self._stored.add(row.key)

    def live(self, key: str) -> Row | None:
        """Return the entry at `key` as of this point of the batch; expire it if its TTL passed."""
        if key not in self._rows:
            self.load([key])
        row = self._rows[key]
        if row is not None and row.expires_at is not None and row.expires_at <= self.now:
            self.remove(row, op=Op.EXPIRE, source="ttl")
            return None
        return row

    # --- changing -------------------------------------------------------------------------

    @property
    def next_revision(self) -> int:
        return self.first_revision + len(self.changes)

    def put(
        self,
        current: Row | None,
        *,
        key: str,
        value: Any,
        text: str,
        size: int,
        metadata: dict[str, str] | None,
        expires_at: datetime | None,
        source: str,
    ) -> Row:
        """Store `value` at `key` (version +1, or 1 when absent); `metadata` None keeps it."""
        revision = self.next_revision
        row = Row(
            key=key, text=text, decoded=value, size=size, revision=revision, updated_at=self.now,
            expires_at=expires_at, source=source,
            metadata=(current.metadata if current else {}) if metadata is None else metadata,
            version=current.version + 1 if current else 1,
            created_at=current.created_at if current else self.now,
        )  # fmt: skip
        self._record(current, row, op=Op.SET, source=source)
        return row

    def remove(self, current: Row, *, op: str, source: str) -> None:
        """Delete `current` (op `delete`, or `expire` when its TTL passed)."""
        self._record(current, None, op=op, source=source)

    def set_metadata(
        self, current: Row, *, metadata: dict[str, str], expires_at: datetime | None, source: str
    ) -> Row:
        """Replace the metadata of `current` (and its expiry); the value's version stays."""
        row = Row(
            key=current.key, text=current.text, decoded=current.decoded, size=current.size,
            metadata=metadata, version=current.version, revision=self.next_revision,
            created_at=current.created_at, updated_at=self.now, expires_at=expires_at,
            source=current.source,
        )  # fmt: skip
        self._record(current, row, op=Op.METADATA, source=source)
        return row

    def _record(self, current: Row | None, row: Row | None, *, op: str, source: str) -> None:
        key = row.key if row is not None else current.key  # type: ignore[union-attr]
        for undo in self._undo:
            if key not in undo:
                undo[key] = self._rows.get(key)
        self._rows[key] = row
        if op == Op.METADATA:
            old_text, new_text = _json(current.metadata), _json(row.metadata)  # type: ignore[union-attr]
        else:
            old_text = current.text if current is not None else None
            new_text = row.text if row is not None else None
        self.changes.append(
            Change(
                revision=self.next_revision, op=op, key=key, old_text=old_text,
                new_text=new_text, version=(row or current).version, source=source,  # type: ignore[union-attr]
                actor=self.actor,
            )
        )  # fmt: skip

    # --- all-or-nothing parts ---------------------------------------------------------------

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Apply what runs inside all-or-nothing: on an error, forget what it changed."""
        undo: dict[str, Row | None] = {}
        self._undo.append(undo)
        mark = len(self.changes)
        try:
            yield
        except BaseException:
            self._rows.update(undo)
            del self.changes[mark:]
            raise
        finally:
            self._undo.pop()

    # --- writing --------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the batch's entries and events and settle the revision on its last change;
        ring the doorbell for after commit. (The first revision was taken already.)"""
        touched = {change.key for change in self.changes if change.key}
        present = [row for key in touched if (row := self._rows.get(key)) is not None]
        gone = [key for key in touched if key in self._stored and self._rows.get(key) is None]
        copy = _copy(len(present)) or _copy(len(self.changes))
        with _pipelined(not copy):
            if _copy(len(present)):
                # COPY cannot update: replace the stored rows (PostgreSQL writes a new row
                # version for an UPDATE anyway).
                _delete_rows(gone + [row.key for row in present if row.key in self._stored])
            else:
                _delete_rows(gone)
            _write_rows(present)
            _insert_events(self.changes, now=self.now)
            if len(self.changes) > 1:
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"UPDATE {_REVISION} SET revision = %s WHERE id = 1",
                        [self.changes[-1].revision],
                    )
        self._stored.difference_update(touched)
        self._stored.update(row.key for row in present)
        if self.changes:
            events.publish(self.changes[-1].revision)


def _json(value: Any) -> str:
    return rules.encode_value(value)


# --- the statements -----------------------------------------------------------------------
# Raw SQL: these run while the store lock is held, so their cost caps write throughput. Values
# stay JSON text throughout (an overwritten value goes to the event log undecoded). On
# PostgreSQL many rows go in with COPY: psycopg parses a client-side query's text for every
# placeholder, which took 110 ms for an INSERT of 1,000 events (9,000 parameters; measured
# with pyinstrument, in-process), while COPY hands each row to the server as it is. A few
# rows go in one INSERT, one round trip where COPY takes two (and an upsert saves the delete).
_COPY_FROM_ROWS = 32


def _copy(rows: int) -> bool:
    return connection.vendor == "postgresql" and rows > _COPY_FROM_ROWS


_ROW_COLUMNS = selectors.ENTRY_COLUMNS
_EVENT_COLUMNS = (
    "revision", "key", "op", "old_value", "new_value", "version", "source", "actor", "timestamp",
)  # fmt: skip


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _send_reads(keys: list[str]) -> list:
    """Start reading the entries of `keys`, one query a thousand keys; `_rows_of` collects."""
    cursors = []
    for chunk in _chunks(keys):
        cursor = connection.cursor()
        cursor.execute(*selectors.entry_rows_query(chunk))
        cursors.append(cursor)
    return cursors


def _rows_of(cursors: list) -> list[Row]:
    read = selectors.read_datetime
    rows = []
    for cursor in cursors:
        with cursor:
            rows.extend(
                Row(
                    key=key, text=text, version=version,
                    metadata={} if metadata == "{}" else json.loads(metadata),
                    revision=revision, created_at=read(created), updated_at=read(updated),
                    expires_at=read(expires), source=source, size=size,
                )  # type: ignore[arg-type]
                for key, text, metadata, version, revision, created, updated, expires, source,
                size in cursor.fetchall()
            )  # fmt: skip
    return rows


def _lock_and_read(keys: list[str]) -> tuple[int, list[Row]]:
    """Take the store lock (the revision moves on by one) and read `keys`' entries under it:
    one round trip on PostgreSQL, since the reads may not start before the lock anyway."""
    with _pipelined(), connection.cursor() as bump:
        bump.execute(_BUMP, [1])
        reads = _send_reads(keys)
        return _revision_of(bump), _rows_of(reads)


def _chunks(items: list, size: int = _ROWS_PER_STATEMENT) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _delete_rows(keys: list[str]) -> None:
    with connection.cursor() as cursor:
        for chunk in _chunks(keys):
            where, params = selectors.keys_condition(chunk)
            cursor.execute(f"DELETE FROM {_ENTRIES} WHERE {where}", params)


def _insert(table: str, columns: tuple[str, ...], rows: list[list[Any]], upsert: bool = False):
    """Insert `rows` (values in `columns` order, JSON as text); `upsert` replaces on "key"."""
    if not rows:
        return
    names = ", ".join(f'"{c}"' for c in columns)
    with connection.cursor() as cursor:
        if _copy(len(rows)):
            sql = f"COPY {table} ({names}) FROM STDIN"
            started = time.monotonic()
            with cursor.cursor.copy(sql) as copy:
                # Named types spare psycopg choosing a dumper for every value (psycopg's advice
                # for fast COPY); JSON and times go as text.
                copy.set_types([_COPY_TYPES.get(c, "text") for c in columns])
                for row in rows:
                    copy.write_row(row)
            if connection.queries_logged:  # Django's query log does not see COPY by itself
                elapsed = f"{time.monotonic() - started:.3f}"
                connection.queries_log.append({"sql": f"{sql} ({len(rows)} rows)", "time": elapsed})
            return
        marks = ["%s::jsonb" if c in _JSON_COLUMNS and _postgres() else "%s" for c in columns]
        one = f"({', '.join(marks)})"
        conflict = ""
        if upsert:
            updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns[1:])
            conflict = f' ON CONFLICT ("key") DO UPDATE SET {updates}'
        for chunk in _chunks(rows):
            cursor.execute(
                f"INSERT INTO {table} ({names}) VALUES {', '.join([one] * len(chunk))}{conflict}",
                [value for row in chunk for value in row],
            )


_JSON_COLUMNS = frozenset({"value", "metadata", "old_value", "new_value"})
# The numeric columns of the entries and events tables, as COPY's client side sends them;
# the others go as text (times as `_stamper` formats them).
_COPY_TYPES = {"version": "int8", "revision": "int8", "size": "int4"}


def _stamper() -> Callable[[datetime], str]:
    """Return a function giving a time's text as the database reads it, formatting each
    distinct time once: a batch's rows share most of theirs (its `now`, common expiries),
    and psycopg's own timestamptz dumper, run for every value, cost more than a row's text
    and numbers together."""
    adapt = datetime.isoformat if _postgres() else connection.ops.adapt_datetimefield_value
    texts: dict[datetime, str] = {}

    def stamp(moment: datetime) -> str:
        text = texts.get(moment)
        if text is None:
            text = texts[moment] = adapt(moment)
        return text

    return stamp


def _write_rows(rows: list[Row]) -> None:
    stamp = _stamper()
    _insert(
        _ENTRIES,
        _ROW_COLUMNS,
        [
            [
                row.key, row.text, _json(row.metadata) if row.metadata else "{}", row.version,
                row.revision,
                stamp(row.created_at), stamp(row.updated_at),
                stamp(row.expires_at) if row.expires_at is not None else None,
                row.source, row.size,
            ]
            for row in rows
        ],
        upsert=True,
    )  # fmt: skip


def _insert_events(changes: list[Change], *, now: datetime) -> None:
    stamp = _stamper()(now)
    _insert(
        _EVENTS,
        _EVENT_COLUMNS,
        [
            [
                c.revision, c.key, str(c.op), c.old_text, c.new_text, c.version, c.source,
                c.actor, stamp,
            ]
            for c in changes
        ],
    )  # fmt: skip


# --- group commit -------------------------------------------------------------------------


class Member:
    """One writer's request to the group: its keys, how to apply it, and then its outcome."""

    __slots__ = ("actor", "keys", "apply", "result", "error", "done", "lead")

    def __init__(self, *, actor: str, keys: list[str], apply: Callable[[Batch], Any]) -> None:
        self.actor, self.keys, self.apply = actor, keys, apply
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = threading.Event()  # set when finished, or when handed the lead

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def _run(members: list[Member]) -> None:
    """Apply `members` in order in one store transaction and commit; record each outcome."""
    keys = list(dict.fromkeys(key for member in members for key in member.keys))
    with _store_lock(), transaction.atomic():
        first, rows = _lock_and_read(keys)
        batch = Batch(first_revision=first, now=timezone.now())
        batch.loaded(keys, rows)
        for member in members:
            batch.actor = member.actor
            try:
                with batch.savepoint():
                    member.result = member.apply(batch)
            except StateError as exc:
                member.error = exc
        if not batch.changes:
            transaction.set_rollback(True)  # nothing changed: the revision goes back
            return
        batch.flush()


class GroupCommit:
    """Concurrent writers of one process share transactions; each is still all-or-nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Member] = []
        self._leading = False

    def submit(self, member: Member) -> Any:
        """Apply `member` with whoever else is writing now; return once it has committed."""
        with self._lock:
            self._queue.append(member)
            lead = not self._leading
            self._leading = True
        if not lead:
            member.lead.wait()
            if member.done:
                return member.outcome()
        # This thread leads: it takes everyone queued (itself included) as one group.
        try:
            with self._lock:
                group = self._take()
            _run_group(group)
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].lead.set()  # hand over: the next group forms behind it
                else:
                    self._leading = False
        return member.outcome()

    def _take(self) -> list[Member]:
        """Take the queued members, up to STATE_GROUP_COMMIT_MAX_KEYS keys (at least one)."""
        limit, taken, size = settings.STATE_GROUP_COMMIT_MAX_KEYS, 0, 0
        for member in self._queue:
            if taken and size + len(member.keys) > limit:
                break
            taken, size = taken + 1, size + len(member.keys)
        group, self._queue = self._queue[:taken], self._queue[taken:]
        return group


def _run_group(group: list[Member]) -> None:
    try:
        _run(group)
    except Exception as exc:
        if len(group) == 1 or isinstance(exc, OperationalError | InterfaceError):
            # The database is unreachable: running each member again would only make each
            # wait out the connection timeout in turn. Every member gets the error.
            for member in group:
                member.error = exc
        else:
            # The shared transaction failed as a whole (a statement failed, a bug in one
            # writer): run each member on its own, so one member's failure is only its own.
            for member in group:
                member.result, member.error = None, None
                try:
                    _run([member])
                except Exception as alone:
                    member.error = alone
    for member in group:
        member.done = True
        member.lead.set()


_group = GroupCommit()


def commit(*, actor: str, keys: list[str], apply: Callable[[Batch], Any]) -> Any:
    """Run `apply` against a batch holding `keys`, in a committed transaction; return its result.

    Inside a caller's transaction (a command, a test) it runs right there, in a savepoint;
    otherwise it joins this process's group commit.
    """
    member = Member(actor=actor, keys=keys, apply=apply)
    if connection.in_atomic_block:
        _run([member])
        return member.outcome()
    return _group.submit(member)
