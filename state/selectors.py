"""Reads of the store. Expired entries are absent here even before the worker sweeps them."""

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from .exceptions import ValidationFailed
from .models import StateEntry, StateEvent, StoreRevision


def _live(now: datetime | None = None) -> QuerySet[StateEntry]:
    now = now or timezone.now()
    return StateEntry.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))


def _is_live(entry: StateEntry, now: datetime) -> bool:
    return entry.expires_at is None or entry.expires_at > now


def entry_get(*, key: str) -> StateEntry | None:
    """Return the live entry for `key`, or None when absent or expired."""
    entry = StateEntry.objects.filter(key=key).first()
    if entry is None or not _is_live(entry, timezone.now()):
        return None
    return entry


def entries_get_many(*, keys: list[str]) -> dict[str, StateEntry | None]:
    """Return each key's live entry (or None), in the order asked, with one query."""
    now = timezone.now()
    found = {e.key: e for e in StateEntry.objects.filter(key__in=keys) if _is_live(e, now)}
    return {key: found.get(key) for key in keys}


def store_revision() -> int:
    """Return the current store revision."""
    return StoreRevision.objects.values_list("revision", flat=True).get(pk=1)


# --- listing ------------------------------------------------------------------------------


def encode_cursor(last: str | int) -> str:
    return base64.urlsafe_b64encode(str(last).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """Return the position a cursor from `encode_cursor` stands for; raise on garbage."""
    if not cursor:
        return None
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed("The cursor is not valid.", field="cursor") from exc


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
    after = decode_cursor(cursor)
    matching = _live()
    if prefix:
        matching = matching.filter(key__startswith=prefix)
    if readable is not None:
        matching = matching.filter(readable)
    page = matching.order_by("key")
    if after is not None:
        page = page.filter(key__gt=after)
    return matching, page, limit


def _page(items: list, *, total: int, limit: int, last_key) -> Page:
    more = len(items) > limit
    items = items[:limit]
    return Page(items=items, total=total, next_cursor=encode_cursor(last_key(items[-1])) if more else None)


def keys_list(
    *, prefix: str = "", readable: Q | None = None, limit: int | None = None, cursor: str | None = None
) -> Page:
    """Return one page of live keys under `prefix` that pass `readable`, sorted."""
    matching, page, limit = _entries_page(prefix=prefix, readable=readable, limit=limit, cursor=cursor)
    keys = list(page.values_list("key", flat=True)[: limit + 1])
    return _page(keys, total=matching.count(), limit=limit, last_key=lambda key: key)


def entries_list(
    *, prefix: str = "", readable: Q | None = None, limit: int | None = None, cursor: str | None = None
) -> tuple[Page, int]:
    """Return one page of live entries and the store revision read before them.

    The revision is read first, so every change after it is still to come on the event
    stream: a client lists, then watches from that revision, and misses nothing (it may see
    a change twice; each entry carries its own revision to tell).
    """
    revision = store_revision()
    matching, page, limit = _entries_page(prefix=prefix, readable=readable, limit=limit, cursor=cursor)
    entries = list(page[: limit + 1])
    return _page(entries, total=matching.count(), limit=limit, last_key=lambda e: e.key), revision


def key_history(*, key: str, limit: int | None = None, cursor: str | None = None) -> Page:
    """Return one page of the change events of `key`, newest first."""
    limit = clean_limit(limit, default=100, maximum=settings.STATE_LIST_MAX_LIMIT)
    before = decode_cursor(cursor)
    events = StateEvent.objects.filter(key=key).order_by("-revision")
    if before is not None:
        if not before.isdigit():
            raise ValidationFailed("The cursor is not valid.", field="cursor")
        events = events.filter(revision__lt=int(before))
    items = list(events[: limit + 1])
    return _page(items, total=StateEvent.objects.filter(key=key).count(), limit=limit,
                 last_key=lambda event: event.revision)  # fmt: skip


def store_stats(*, readable: Q | None = None) -> dict:
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
    recent = StateEvent.objects.order_by("-revision")[: settings.STATE_HOT_KEYS_WINDOW]
    recent_ids = StateEvent.objects.filter(revision__in=recent.values("revision"))
    hot = recent_ids.exclude(key="")
    if readable is not None:
        hot = hot.filter(readable)
    hot_keys = [
        {"key": row["key"], "changes": row["changes"]}
        for row in hot.values("key")
        .annotate(changes=Count("revision"))
        .order_by("-changes", "key")[: settings.STATE_HOT_KEYS]
    ]
    return {
        "total_keys": totals["total_keys"],
        "total_size": totals["total_size"] or 0,
        "version": store_revision(),
        "metadata_keys": totals["metadata_keys"],
        "expiring_keys": totals["expiring_keys"],
        "event_log_size": StateEvent.objects.count(),
        "hot_keys": hot_keys,
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
    return list(rows[:limit])


def event_log_oldest_revision() -> int | None:
    """Return the oldest revision still in the event log, or None when the log is empty."""
    return StateEvent.objects.order_by("revision").values_list("revision", flat=True).first()
