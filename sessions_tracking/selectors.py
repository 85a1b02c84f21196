"""Reads of the session records the tracking service merges into and the worker sweeps."""

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from state import selectors
from state.models import StateEntry


def sessions_get(*, keys: list[str]) -> dict[str, StateEntry | None]:
    """Return the live session entry (or None) of each key, with one query."""
    return selectors.entries_get_many(keys=keys)


def active_sessions(*, after: str = "", limit: int = 500) -> list[StateEntry]:
    """Return up to `limit` live session entries marked active, in key order after `after`."""
    live = Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    return list(
        StateEntry.objects.filter(
            live, selectors.key_prefix_q(settings.STATE_SESSION_PREFIX), key__gt=after,
            value__active=True,
        ).order_by("key")[:limit]
    )  # fmt: skip
