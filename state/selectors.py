"""Reads of the store. Expired entries are absent here even before the worker sweeps them."""

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, QuerySet, Sum, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from . import crypto, diffs, hotkeys, snapshots
from .exceptions import InvalidSnapshot, NotFound, ValidationFailed
from .models import Snapshot, StateEntry, StateEvent, StoreRevision, snapshot_storage
from .rules import KEY_PATTERN


def _live(now: datetime | None = None) -> QuerySet[StateEntry]:
    now = now or timezone.now()
    return StateEntry.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))


def _is_live(entry: StateEntry, now: datetime) -> bool:
    return entry.expires_at is None or entry.expires_at > now


def decrypted(entry: StateEntry) -> StateEntry:
    """Decrypt an entry's value in place (encryption at rest: state/crypto.py)."""
    entry.value = crypto.unseal(entry.key, entry.value)
    return entry


def _plain_event(event: StateEvent) -> StateEvent:
    """Decrypt an event row's old and new values in place."""
    event.old_value, event.new_value = crypto.unseal_event(
        event.key, event.op, event.old_value, event.new_value
    )
    return event


# --- entry rows by key, raw --------------------------------------------------------------
# The hottest reads (a GET, and the write path's read under the store lock) skip the ORM:
# its query compiler and model building were half of a GET's CPU in the bench profile.
# Values and metadata come back as JSON text, so the write path can keep old values undecoded.

ENTRY_COLUMNS = (
    "key", "value", "metadata", "version", "revision", "created_at", "updated_at", "expires_at",
    "source", "size",
)  # fmt: skip


_TEXT_COLUMNS = ("value", "metadata", "created_at", "updated_at", "expires_at")


def read_datetime(value) -> datetime | None:
    """A datetime column as `entry_rows` returns it (PostgreSQL: text; SQLite: naive UTC)."""
    if value is None:
        return None
    # psycopg's own timestamptz loader took 13 us a value (a quarter of a 1,000-key write
    # batch's reads, in cProfile); the column's text through fromisoformat takes 0.7 (timeit).
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def keys_condition(keys: list[str]) -> tuple[str, list]:
    """A raw `WHERE` condition on "key" for `keys`, and its parameters (an array on PostgreSQL)."""
    if len(keys) == 1:
        return '"key" = %s', keys
    if connection.vendor == "postgresql":
        return '"key" = ANY(%s)', [keys]
    return f'"key" IN ({", ".join(["%s"] * len(keys))})', keys


def entry_rows_query(keys: list[str]) -> tuple[str, list]:
    """The SELECT of `entry_rows`, and its parameters (the write path pipelines it)."""
    postgres = connection.vendor == "postgresql"
    cast = "::text" if postgres else ""
    columns = ", ".join(f'"{c}"{cast}' if c in _TEXT_COLUMNS else f'"{c}"' for c in ENTRY_COLUMNS)
    where, params = keys_condition(keys)
    return f"SELECT {columns} FROM {StateEntry._meta.db_table} WHERE {where}", params


def entry_rows(*, keys: list[str]) -> list[tuple]:
    """Return the stored rows of `keys` (any order), columns as ENTRY_COLUMNS, JSON as text."""
    with connection.cursor() as cursor:
        cursor.execute(*entry_rows_query(keys))
        return cursor.fetchall()


def entry_get(*, key: str) -> StateEntry | None:
    """Return the live entry for `key`, or None when absent or expired."""
    rows = entry_rows(keys=[key])
    if not rows:
        return None
    key, value, metadata, version, revision, created, updated, expires, source, size = rows[0]
    expires_at = read_datetime(expires)
    if expires_at is not None and expires_at <= timezone.now():
        return None
    return decrypted(StateEntry(
        key=key, value=json.loads(value), metadata=json.loads(metadata), version=version,
        revision=revision, created_at=read_datetime(created), updated_at=read_datetime(updated),
        expires_at=expires_at, source=source, size=size,
    ))  # fmt: skip


def entries_get_many(*, keys: list[str]) -> dict[str, StateEntry | None]:
    """Return each key's live entry (or None), in the order asked, with one query."""
    now = timezone.now()
    found = {
        e.key: decrypted(e) for e in StateEntry.objects.filter(key__in=keys) if _is_live(e, now)
    }
    return {key: found.get(key) for key in keys}


def store_revision() -> int:
    """Return the current store revision."""
    return StoreRevision.objects.values_list("revision", flat=True).get(pk=1)


# --- listing ------------------------------------------------------------------------------


# Cursors are positions in plain text, so a client or a schema can say what a valid one is:
# a listing's cursor is the last key of the previous page (the next page starts after it), a
# history's is the revision of the last event shown (the next page holds older ones).
HISTORY_CURSOR = re.compile(r"[1-9][0-9]{0,17}")


def encode_cursor(last: str | int) -> str:
    return str(last)


def decode_key_cursor(cursor: str | None) -> str | None:
    """Return the key a listing cursor names; raise unless it is a valid key."""
    if cursor is None:
        return None
    if not KEY_PATTERN.fullmatch(cursor):
        raise ValidationFailed("The cursor is not valid: it must be a key.", field="cursor")
    return cursor


def decode_revision_cursor(cursor: str | None) -> int | None:
    """Return the revision a history cursor names; raise unless it is one (1-18 digits)."""
    if cursor is None:
        return None
    # fullmatch on an ASCII pattern, not str.isdigit(): "²".isdigit() is true, int("²") raises.
    if not HISTORY_CURSOR.fullmatch(cursor):
        raise ValidationFailed("The cursor is not valid: it must be a revision.", field="cursor")
    return int(cursor)


def key_prefix_q(prefix: str) -> Q:
    """Select the keys starting with `prefix`, case-sensitively on every database."""
    if connection.vendor == "sqlite" and prefix and prefix[-1] != chr(0x10FFFF):
        # SQLite's LIKE ignores ASCII case. Its default BINARY collation orders keys by code
        # point, so a range is an exact prefix match (and walks the primary key index).
        return Q(key__gte=prefix, key__lt=prefix[:-1] + chr(ord(prefix[-1]) + 1))
    return Q(key__startswith=prefix)


def clean_limit(limit: int | None, *, default: int, maximum: int) -> int:
    """Return a page size within 1..maximum."""
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise ValidationFailed(f"limit must be between 1 and {maximum}.", field="limit")
    return limit


@dataclass(frozen=True, slots=True)
class Page:
    items: list
    total: int
    next_cursor: str | None


def _entries_page(
    *, prefix: str, readable: Q | None, limit: int | None, cursor: str | None
) -> tuple[QuerySet[StateEntry], QuerySet[StateEntry], int]:
    limit = clean_limit(
        limit, default=settings.STATE_LIST_DEFAULT_LIMIT, maximum=settings.STATE_LIST_MAX_LIMIT
    )
    after = decode_key_cursor(cursor)
    if prefix and not KEY_PATTERN.fullmatch(prefix):
        raise ValidationFailed("prefix must be the start of a valid key.", field="prefix")
    matching = _live()
    if prefix:
        matching = matching.filter(key_prefix_q(prefix))
    if readable is not None:
        matching = matching.filter(readable)
    page = matching.order_by("key")
    if after is not None:
        page = page.filter(key__gt=after)
    return matching, page, limit


def _page(items: list, *, total: int, limit: int, last_key) -> Page:
    more = len(items) > limit
    items = items[:limit]
    return Page(
        items=items, total=total, next_cursor=encode_cursor(last_key(items[-1])) if more else None
    )


def keys_list(
    *,
    prefix: str = "",
    readable: Q | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Page:
    """Return one page of live keys under `prefix` that pass `readable`, sorted."""
    matching, page, limit = _entries_page(
        prefix=prefix, readable=readable, limit=limit, cursor=cursor
    )
    keys = list(page.values_list("key", flat=True)[: limit + 1])
    return _page(keys, total=matching.count(), limit=limit, last_key=lambda key: key)


def entries_list(
    *,
    prefix: str = "",
    readable: Q | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> tuple[Page, int]:
    """Return one page of live entries and the store revision read before them.

    The revision is read first, so every change after it is still to come on the event
    stream: a client lists, then watches from that revision, and misses nothing (it may see
    a change twice; each entry carries its own revision to tell).
    """
    revision = store_revision()
    matching, page, limit = _entries_page(
        prefix=prefix, readable=readable, limit=limit, cursor=cursor
    )
    entries = [decrypted(entry) for entry in page[: limit + 1]]
    return _page(entries, total=matching.count(), limit=limit, last_key=lambda e: e.key), revision


def key_history(*, key: str, limit: int | None = None, cursor: str | None = None) -> Page:
    """Return one page of the change events of `key`, newest first."""
    limit = clean_limit(limit, default=100, maximum=settings.STATE_LIST_MAX_LIMIT)
    before = decode_revision_cursor(cursor)
    events = StateEvent.objects.filter(key=key).order_by("-revision")
    if before is not None:
        events = events.filter(revision__lt=before)
    items = [_plain_event(event) for event in events[: limit + 1]]
    return _page(items, total=StateEvent.objects.filter(key=key).count(), limit=limit,
                 last_key=lambda event: event.revision)  # fmt: skip


def store_stats(
    *, readable: Q | None = None, can_read: Callable[[str], bool] | None = None
) -> dict:
    """Return counts and sizes of the live store as seen by a reader, and its hottest keys."""
    now = timezone.now()
    live = _live(now)
    if readable is not None:
        live = live.filter(readable)
    totals = live.aggregate(
        total_keys=Count("key"),
        total_size=Sum("size"),
        expiring_keys=Count("key", filter=Q(expires_at__isnull=False)),
        metadata_keys=Count("key", filter=~Q(metadata={})),
    )
    hot_keys = [
        {"key": hot.key, "accesses": hot.accesses}
        for hot in hotkeys.top(settings.STATE_HOT_KEYS, can_read=can_read)
    ]
    return {
        "total_keys": totals["total_keys"],
        "total_size": totals["total_size"] or 0,
        "version": store_revision(),
        "metadata_keys": totals["metadata_keys"],
        "expiring_keys": totals["expiring_keys"],
        "event_log_size": StateEvent.objects.count(),
        "hot_keys": hot_keys,
        **snapshot_stats(),
    }


def store_totals() -> dict[str, int]:
    """Return the live key count and bytes, the revision, log rows and snapshots (for /metrics)."""
    totals = _live().aggregate(keys=Count("key"), bytes=Sum("size"))
    return {
        "keys": totals["keys"],
        "bytes": totals["bytes"] or 0,
        "revision": store_revision(),
        "event_log_rows": StateEvent.objects.count(),
        "snapshots": Snapshot.objects.count(),
    }


# --- event stream -------------------------------------------------------------------------


def events_after(
    *, after: int, upto: int | None = None, prefixes: list[str] | None = None, limit: int
) -> list[StateEvent]:
    """Return up to `limit` log rows after revision `after` (through `upto`), oldest first.

    With `prefixes`, only rows of keys under them, plus every restore (it concerns all keys).
    """
    rows = StateEvent.objects.filter(revision__gt=after).order_by("revision")
    if upto is not None:
        rows = rows.filter(revision__lte=upto)
    if prefixes is not None:
        wanted = Q(op=StateEvent.Op.RESTORE)
        for prefix in prefixes:
            wanted |= Q(key__startswith=prefix)
        rows = rows.filter(wanted)
    return [_plain_event(row) for row in rows[:limit]]


def event_log_oldest_revision() -> int | None:
    """Return the oldest revision still in the event log, or None when the log is empty."""
    return StateEvent.objects.order_by("revision").values_list("revision", flat=True).first()


# --- snapshots (issue 4) ------------------------------------------------------------------


def snapshot_stats() -> dict:
    """Return how many snapshots are kept and when the newest was taken."""
    latest = Snapshot.objects.order_by("-created_at", "-id").values_list("created_at", flat=True)
    return {"snapshots": Snapshot.objects.count(), "last_snapshot_at": latest.first()}


def snapshots_list() -> QuerySet[Snapshot]:
    """Return every kept snapshot, newest first."""
    return Snapshot.objects.order_by("-created_at", "-id")


def snapshot_get(*, snapshot_id: int) -> Snapshot:
    """Return the snapshot record `snapshot_id`; raise NotFound when there is none."""
    snapshot = Snapshot.objects.filter(pk=snapshot_id).first()
    if snapshot is None:
        raise NotFound(f"Snapshot {snapshot_id} does not exist.", snapshot_id=snapshot_id)
    return snapshot


def snapshot_open(*, snapshot: Snapshot) -> IO[bytes]:
    """Open the stored file of `snapshot` for reading; raise InvalidSnapshot if it is gone."""
    try:
        # The storage is looked up now, not the one bound to the field at import time, so a
        # changed STORAGES setting applies everywhere at once.
        return snapshot_storage().open(snapshot.file.name, "rb")
    except (FileNotFoundError, OSError) as exc:
        raise InvalidSnapshot(
            f"The file of snapshot {snapshot.pk} is missing from storage.", snapshot_id=snapshot.pk
        ) from exc


def snapshot_open_verified(*, snapshot: Snapshot) -> IO[bytes]:
    """Open the stored file of `snapshot` after checking it against its recorded checksum."""
    with snapshot_open(snapshot=snapshot) as stream:
        checksum = snapshots.file_checksum(stream)
    if checksum != snapshot.checksum:
        raise InvalidSnapshot(
            f"The stored file of snapshot {snapshot.pk} does not match its recorded checksum.",
            snapshot_id=snapshot.pk,
        )
    return snapshot_open(snapshot=snapshot)


@contextmanager
def consistent_read() -> Iterator[int]:
    """Hold one unchanging view of the store; yield the store revision it shows.

    Every query inside the block sees the store exactly as of that revision, while writers
    carry on (except inside a caller's transaction, see below).
    """
    if connection.in_atomic_block:
        # Inside a caller's transaction the isolation level is already fixed. On SQLite that
        # transaction began IMMEDIATE and holds the write lock, so nothing can change. On
        # PostgreSQL a share lock on the revision row holds off writers (each one's first
        # statement updates that row) until the caller's transaction ends.
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT revision FROM state_storerevision WHERE id = 1 FOR SHARE")
                yield cursor.fetchone()[0]
        else:
            yield store_revision()
        return
    if connection.vendor == "postgresql":
        # REPEATABLE READ takes one MVCC snapshot at the first statement and keeps it for the
        # whole transaction; READ ONLY because nothing here writes. Writers are not blocked.
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield store_revision()
        return
    if connection.vendor == "sqlite":
        # The project's SQLite connections begin transactions IMMEDIATE, i.e. holding the
        # write lock, which would stall every writer while a snapshot streams out. A DEFERRED
        # transaction takes no lock up front; in WAL mode its first read pins a snapshot of
        # the database that later commits do not disturb, so writers proceed meanwhile.
        connection.ensure_connection()  # connecting would reset transaction_mode
        mode = connection.transaction_mode
        connection.transaction_mode = "DEFERRED"
        try:
            with transaction.atomic():
                connection.transaction_mode = mode
                yield store_revision()
        finally:
            connection.transaction_mode = mode
        return
    with transaction.atomic():
        yield store_revision()


# The value as the database's JSON text: written to the file without decoding it.
_DUMP_FIELDS = (
    "key", "value_json", "size", "metadata", "version", "revision", "created_at", "updated_at",
    "expires_at", "source",
)  # fmt: skip


def snapshot_dump(
    *,
    target: IO[bytes],
    batch_size: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[snapshots.Header, snapshots.Written]:
    """Write the live store, as of one revision, to `target` in the snapshot format.

    Reads in key order one page at a time (keyset pagination), so memory stays bounded.
    """
    with consistent_read() as revision:
        now = timezone.now()
        live = _live(now).order_by("key").annotate(value_json=Cast("value", TextField()))
        key_count = live.count()
        header = snapshots.Header(
            version=snapshots.VERSION, revision=revision, created_at=now, key_count=key_count
        )
        writer = snapshots.Writer(target, revision=revision, created_at=now, key_count=key_count)
        done, last_key = 0, None
        while True:
            page = live if last_key is None else live.filter(key__gt=last_key)
            rows = list(page.values_list(*_DUMP_FIELDS)[:batch_size])
            for key, value_json, size, *fields in rows:
                entry = snapshots.Entry(key, None, *fields)
                writer.write_encoded(entry, value_json=value_json, size=size)
            done += len(rows)
            if progress is not None:
                progress(done, key_count)
            if len(rows) < batch_size:
                break
            last_key = rows[-1][0]
        return header, writer.close()


def active_users(*, ids: list[int]) -> dict:
    """Return the active users among `ids`, by id, freshly read (for re-checking access)."""
    from django.contrib.auth import get_user_model

    return {user.pk: user for user in get_user_model().objects.filter(pk__in=ids, is_active=True)}


# --- admin (issue 10) ---------------------------------------------------------------------


def entry_namespaces(*, limit: int = 50) -> list[str]:
    """Return the first `limit` namespaces (a key's part before its first ':'), in key order.

    Skips through the primary key index, one short query per namespace, instead of reading
    every key: ';' follows ':' in code point order, so every key `ns:…` sorts below `ns;`.
    Keys without a ':' have no namespace; each costs a step, and the steps are bounded too.
    """
    keys = StateEntry.objects.order_by("key").values_list("key", flat=True)
    names: list[str] = []
    page = keys
    for _ in range(limit * 4):
        key = page.first()
        if key is None or len(names) >= limit:
            break
        namespace, colon, _ = key.partition(":")
        if colon:
            names.append(namespace)
            page = keys.filter(key__gte=namespace + ";")
        else:
            page = keys.filter(key__gt=key)
    return names


def event_recent_values(*, field: str, window: int = 5000, limit: int = 50) -> list[str]:
    """Return the distinct non-empty values of `field` among the newest `window` log rows.

    Bounded on purpose: a DISTINCT over the whole event log (a million rows by default
    retention) would make every admin page of the log slow.
    """
    if field not in ("source", "actor"):
        raise ValueError(f"no filter on event field {field!r}")
    recent = StateEvent.objects.order_by("-revision").values_list(field, flat=True)[:window]
    return sorted({value for value in recent if value})[:limit]


def _store_items(batch_size: int, now: datetime) -> Iterator[diffs.Item]:
    live = _live(now).order_by("key").values_list("key", "value", "metadata", "expires_at")
    last_key = None
    while True:
        page = live if last_key is None else live.filter(key__gt=last_key)
        rows = list(page[:batch_size])
        for key, value, metadata, expires_at in rows:
            yield diffs.Item(key=key, value=value, metadata=metadata, expires_at=expires_at)
        if len(rows) < batch_size:
            return
        last_key = rows[-1][0]


def _snapshot_items(reader: snapshots.Reader, now: datetime) -> Iterator[diffs.Item]:
    for entry in reader.entries():
        if entry.expires_at is None or entry.expires_at > now:  # an expired key reads as absent
            yield diffs.Item(
                key=entry.key, value=entry.value, metadata=entry.metadata,
                expires_at=entry.expires_at,
            )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RestorePreview:
    snapshot: Snapshot
    diff: diffs.KeyDiff
    store_revision: int  # the store as compared


def snapshot_restore_preview(
    *, snapshot_id: int, limit: int = 100, batch_size: int = 500
) -> RestorePreview:
    """Compare the store with a snapshot, key by key, as a stream: what would a restore change?

    The snapshot file and the store are both read in key order and merge-joined, so memory
    stays bounded by one store page whatever the size of either; the whole file is verified
    on the way (a damaged one raises InvalidSnapshot).
    """
    snapshot = snapshot_get(snapshot_id=snapshot_id)
    with snapshot_open(snapshot=snapshot) as stream, consistent_read() as revision:
        now = timezone.now()
        reader = snapshots.Reader(stream, expected_checksum=snapshot.checksum)
        try:
            diff = diffs.diff_sorted(
                current=_store_items(batch_size, now),
                target=_snapshot_items(reader, now),
                limit=limit,
            )
        except ValueError as exc:  # the store's order is not the file's (a non-C collation)
            raise InvalidSnapshot(
                f"Cannot compare the store with snapshot {snapshot.pk}: {exc}."
            ) from exc
    return RestorePreview(snapshot=snapshot, diff=diff, store_revision=revision)
