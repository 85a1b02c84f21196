"""What a restore would change: a merge-join of two key-ordered streams (pure, no ORM).

Both sides arrive in strictly increasing key order (the snapshot file's order, and the store
read by primary key), so one pass with one item of each side in hand compares any number of
keys in constant memory; only the first `limit` keys of each kind are kept for display.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .rules import json_equal


@dataclass(frozen=True, slots=True)
class Item:
    """One key's content as far as a restore is concerned."""

    key: str
    value: Any
    metadata: dict[str, str]
    expires_at: datetime | None


@dataclass(slots=True)
class KeyDiff:
    """Counts of keys a restore adds, removes, changes or leaves alone, and the first few."""

    limit: int
    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    added_keys: list[str] = field(default_factory=list)
    removed_keys: list[str] = field(default_factory=list)
    # (key, what differs: "value", "metadata" and/or "expiry")
    changed_keys: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def total_changes(self) -> int:
        return self.added + self.removed + self.changed


def _differences(current: Item, target: Item) -> list[str]:
    what = []
    if not json_equal(current.value, target.value):
        what.append("value")
    if current.metadata != target.metadata:
        what.append("metadata")
    if current.expires_at != target.expires_at:
        what.append("expiry")
    return what


def _ordered(items: Iterable[Item], side: str) -> Iterator[Item]:
    last: str | None = None
    for item in items:
        if last is not None and item.key <= last:
            raise ValueError(f"the {side} keys are not in increasing order at '{item.key}'")
        last = item.key
        yield item


def diff_sorted(*, current: Iterable[Item], target: Iterable[Item], limit: int = 100) -> KeyDiff:
    """Compare the store as it is (`current`) with what a restore makes it (`target`)."""
    diff = KeyDiff(limit=limit)
    left, right = _ordered(current, "store"), _ordered(target, "snapshot")
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.key < b.key):
            diff.removed += 1
            if len(diff.removed_keys) < limit:
                diff.removed_keys.append(a.key)
            a = next(left, None)
        elif a is None or b.key < a.key:
            diff.added += 1
            if len(diff.added_keys) < limit:
                diff.added_keys.append(b.key)
            b = next(right, None)
        else:
            what = _differences(a, b)
            if what:
                diff.changed += 1
                if len(diff.changed_keys) < limit:
                    diff.changed_keys.append((a.key, what))
            else:
                diff.unchanged += 1
            a, b = next(left, None), next(right, None)
    return diff
