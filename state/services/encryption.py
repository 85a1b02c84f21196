"""Key rotation: re-encrypt stored values with the newest key (state/crypto.py does the crypto).

Re-encryption is not a change to the store: the values stay the same, so it takes no revision,
writes no event, bumps no version or `updated_at`, and broadcasts nothing. It rewrites the
stored form in place: entries under the encrypted prefixes, and the old/new values of their
event-log rows (which hold the same sealed form). Plain values found there (written before
their prefix was encrypted) are sealed on the way.
"""

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q

from .. import crypto
from ..models import Snapshot, StateEntry, StateEvent
from ..selectors import key_prefix_q
from .writes import _record_write


@dataclass(frozen=True, slots=True)
class Reencrypted:
    entries: int  # entry rows rewritten
    events: int  # event-log rows rewritten
    remaining: int  # rows still holding a value the newest key alone cannot open
    snapshots: int  # snapshot files kept from before the run: they keep their old ciphertext


def _encrypted_keys() -> Q:
    wanted = Q(pk__in=[])
    for prefix in settings.STATE_ENCRYPTED_PREFIXES:
        wanted |= key_prefix_q(prefix)
    return wanted


def _value_events():
    return StateEvent.objects.filter(_encrypted_keys(), op__in=crypto.VALUE_OPS)


def values_reencrypt(
    *, batch_size: int = 500, progress: Callable[[str, int], None] | None = None
) -> Reencrypted:
    """Re-seal every value under the encrypted prefixes with the newest key, in batches.

    Each batch locks its entry rows (FOR UPDATE) in one short transaction, so a concurrent
    write to one of them waits for the batch instead of being overwritten with a stale value.
    Values already under the newest key are skipped: an interrupted run can simply be re-run.
    """
    snapshots = Snapshot.objects.count()
    entries = events = 0
    last_key: str | None = None
    while True:
        with _record_write():
            rows = StateEntry.objects.filter(_encrypted_keys()).order_by("key")
            if last_key is not None:
                rows = rows.filter(key__gt=last_key)
            batch = list(rows.select_for_update().only("key", "value")[:batch_size])
            if not batch:
                break
            last_key = batch[-1].key
            changed = []
            for entry in batch:
                if (value := crypto.rotated(entry.key, entry.value)) is not None:
                    entry.value = value
                    changed.append(entry)
            StateEntry.objects.bulk_update(changed, ["value"])
            entries += len(changed)
        if progress is not None:
            progress("entries", entries)
    last_revision = 0
    while True:
        # Event rows never change once written (compaction may delete some meanwhile, which
        # only makes their update a no-op), so they need no lock.
        with _record_write():
            batch = list(
                _value_events()
                .filter(revision__gt=last_revision)
                .order_by("revision")
                .only("revision", "key", "old_value", "new_value")[:batch_size]
            )
            if not batch:
                break
            last_revision = batch[-1].revision
            changed = []
            for event in batch:
                old = crypto.rotated(event.key, event.old_value)
                new = crypto.rotated(event.key, event.new_value)
                if old is not None or new is not None:
                    event.old_value = event.old_value if old is None else old
                    event.new_value = event.new_value if new is None else new
                    changed.append(event)
            StateEvent.objects.bulk_update(changed, ["old_value", "new_value"])
            events += len(changed)
        if progress is not None:
            progress("events", events)
    return Reencrypted(
        entries=entries, events=events, remaining=values_stale(), snapshots=snapshots
    )


def values_stale() -> int:
    """Count entry and event rows holding a value the newest key alone cannot open."""
    count = 0
    for key, value in StateEntry.objects.filter(_encrypted_keys()).values_list("key", "value"):
        count += crypto.stale(key, value)
    rows = _value_events().values_list("key", "old_value", "new_value")
    for key, old, new in rows.iterator(chunk_size=2000):
        count += crypto.stale(key, old) or crypto.stale(key, new)
    return count
