"""Snapshots (create, prune, delete) and restore: whole-store operations."""

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from django.core.files import File
from django.db import connection, transaction

from .. import crypto, events, metrics, rules, selectors, snapshots
from ..exceptions import InvalidSnapshot, NotFound, StateError, ValidationFailed
from ..models import Snapshot, StateEntry, StateEvent, snapshot_storage
from .writes import _record_write, _write

logger = logging.getLogger(__name__)

# --- snapshots and restore (issue 4) ------------------------------------------------------
# A snapshot is not a change to the store: taking, pruning or deleting one writes only its
# record (no revision, no event). A restore is a change: one revision, one `restore` event.

RESTORE_BATCH_SIZE = 1000


def _delete_files_on_commit(names: list[str]) -> None:
    storage = snapshot_storage()

    def delete() -> None:
        for name in names:
            try:
                storage.delete(name)
            except OSError:
                logger.warning("could not delete snapshot file %s", name, exc_info=True)

    if names:
        transaction.on_commit(delete)


def snapshot_create(
    *,
    label: str = "",
    actor: str = "",
    keep: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Snapshot:
    """Write the store at one revision to snapshot storage, record it, prune to `keep` newest."""

    label = rules.clean_label(label)
    started = time.monotonic()
    with tempfile.TemporaryFile(prefix="statehub-snapshot-") as spool:
        header, written = selectors.snapshot_dump(target=spool, progress=progress)
        spool.seek(0)
        stamp = header.created_at.strftime("%Y%m%dT%H%M%S")
        name = f"snapshot-{stamp}-r{header.revision}-{uuid.uuid4().hex[:8]}{snapshots.SUFFIX}"
        name = snapshot_storage().save(name, File(spool, name=name))
    try:
        with _record_write():
            snapshot = Snapshot.objects.create(
                label=label,
                created_at=header.created_at,
                created_by=actor,
                revision=header.revision,
                key_count=written.key_count,
                total_size=written.total_size,
                compressed_size=written.compressed_size,
                checksum=written.checksum,
                format_version=snapshots.VERSION,
                file=name,
            )
            snapshot_prune(keep=settings.STATE_MAX_SNAPSHOTS if keep is None else keep)
    except BaseException:
        snapshot_storage().delete(name)
        raise
    metrics.SNAPSHOT_SECONDS.observe(time.monotonic() - started)
    metrics.SNAPSHOT_BYTES.observe(snapshot.compressed_size)
    return snapshot


def snapshot_prune(*, keep: int) -> int:
    """Delete all but the `keep` newest snapshots and their files; return how many went."""
    with _record_write():
        newest_first = Snapshot.objects.order_by("-created_at", "-id")
        doomed = list(newest_first.values_list("pk", "file")[max(keep, 0) :])
        if doomed:
            Snapshot.objects.filter(pk__in=[pk for pk, _ in doomed]).delete()
            _delete_files_on_commit([name for _, name in doomed])
    return len(doomed)


def snapshot_delete(*, snapshot_id: int, actor: str = "") -> None:
    """Delete a snapshot record and, once that commits, its file."""
    with _record_write():
        snapshot = Snapshot.objects.select_for_update().filter(pk=snapshot_id).first()
        if snapshot is None:
            raise NotFound(f"Snapshot {snapshot_id} does not exist.", snapshot_id=snapshot_id)
        snapshot.delete()
        _delete_files_on_commit([snapshot.file.name])
    logger.info("snapshot %s deleted by %s", snapshot_id, actor or "-")


@dataclass(frozen=True, slots=True)
class RestoreResult:
    snapshot_id: int | None
    snapshot_revision: int
    key_count: int
    total_size: int
    checksum: str
    revision: int | None  # the store revision of the restore; None for a dry run
    dry_run: bool


def _restore_entry(entry: snapshots.Entry, *, revision: int) -> StateEntry:
    """Check one snapshot entry against the store's rules; return the row it becomes."""
    try:
        rules.validate_key(entry.key)
        stored, plain = crypto.for_restore(entry.key, entry.value)  # crypto: kept sealed, must open
        size = rules.value_size(plain)
        metadata = rules.clean_metadata(entry.metadata)
        source = rules.clean_source(entry.source)
    except StateError as exc:
        raise InvalidSnapshot(
            f"Snapshot entry '{entry.key}' breaks the store's rules: {exc.message}", key=entry.key
        ) from exc
    return StateEntry(
        key=entry.key,
        value=stored,
        metadata=metadata,
        version=entry.version,
        revision=revision,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
        expires_at=entry.expires_at,
        source=source,
        size=size,
    )


def _insert_entries(entries: list[StateEntry]) -> None:
    """Insert new entry rows: with COPY on PostgreSQL, bulk_create elsewhere.

    bulk_create sends each column as one UNNEST array, and psycopg escapes every JSON value
    for it with a regular expression (a quarter of a restore's time in a profile). COPY takes
    the same values, prepared by the same fields: a 100k-key restore went from 30.0 s to 20.5 s.
    """
    if connection.vendor != "postgresql":
        StateEntry.objects.bulk_create(entries)
        return
    fields = StateEntry._meta.concrete_fields
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    sql = f"COPY {quote(StateEntry._meta.db_table)} ({columns}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for entry in entries:
            copy.write_row(
                [
                    field.get_db_prep_save(getattr(entry, field.attname), connection)
                    for field in fields
                ]
            )


def state_restore(
    *,
    snapshot_id: int | None = None,
    path: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    actor: str = "",
    source: str = "restore",
    progress: Callable[[str, int, int], None] | None = None,
) -> RestoreResult:
    """Replace the whole store with a snapshot's entries in one transaction (one new revision).

    The file is read as a stream and applied in batches inside one transaction, verified as
    it goes: a corrupt, truncated, foreign or future-version file rolls everything back. A
    file with no snapshot record (or a dry run) is first verified end to end on its own, so
    that a bad file never holds the write lock; a recorded snapshot's file is checked against
    its recorded checksum instead, which is cheaper (26% off a 100k-key restore).
    Entries keep their snapshot versions, times, metadata and expiries; their `revision`
    becomes the restore's revision.
    """

    if (snapshot_id is None) == (path is None):
        raise ValidationFailed("Give exactly one of a snapshot id and a file to restore from.")
    source = rules.clean_source(source)
    snapshot = selectors.snapshot_get(snapshot_id=snapshot_id) if snapshot_id is not None else None

    def open_file(*, verified: bool = False) -> IO[bytes]:
        if snapshot is not None and verified:
            # The recorded checksum first: cheap, and the clearest word on a damaged file.
            return selectors.snapshot_open_verified(snapshot=snapshot)
        if snapshot is not None:
            return selectors.snapshot_open(snapshot=snapshot)
        try:
            return open(path, "rb")  # type: ignore[arg-type]
        except OSError as exc:
            raise InvalidSnapshot(f"Cannot read {path}: {exc.strerror}.") from exc

    def read(stream: IO[bytes]) -> snapshots.Reader:
        reader = snapshots.Reader(
            stream, expected_checksum=snapshot.checksum if snapshot is not None else None
        )
        if snapshot is not None and reader.header.revision != snapshot.revision:
            raise InvalidSnapshot(f"The file of snapshot {snapshot.pk} is not the one recorded.")
        return reader

    def result(reader: snapshots.Reader, *, revision: int | None) -> RestoreResult:
        """What was verified (revision None: a dry run) or restored at `revision`."""
        return RestoreResult(
            snapshot_id=snapshot_id,
            snapshot_revision=reader.header.revision,
            key_count=reader.header.key_count,
            total_size=reader.total_size,
            checksum=reader.checksum,
            revision=revision,
            dry_run=revision is None,
        )

    def report(phase: str, done: int, total: int) -> None:
        if progress is not None and (done % RESTORE_BATCH_SIZE == 0 or done == total):
            progress(phase, done, total)

    if dry_run or snapshot is None:
        with open_file(verified=True) as stream:
            reader = read(stream)
            total = reader.header.key_count
            for done, entry in enumerate(reader.entries(), 1):
                _restore_entry(entry, revision=0)
                report("verify", done, total)
        if dry_run:
            return result(reader, revision=None)
    # open_file comes first: a recorded snapshot's checksum is checked before the write lock.
    with open_file(verified=snapshot is not None) as stream, _write(actor=actor) as tx:
        reader = read(stream)
        total = reader.header.key_count
        revision = tx.next_revision()
        StateEntry.objects.all().delete()
        batch: list[StateEntry] = []
        done = 0
        for entry in reader.entries():
            batch.append(_restore_entry(entry, revision=revision))
            if len(batch) >= RESTORE_BATCH_SIZE:
                _insert_entries(batch)
                done += len(batch)
                batch.clear()
                report("restore", done, total)
        _insert_entries(batch)
        report("restore", done + len(batch), total)
        StateEvent.objects.create(
            revision=revision,
            key="",
            op=StateEvent.Op.RESTORE,
            old_value=None,
            new_value={"snapshot_id": snapshot_id, "key_count": total},
            version=0,
            source=source,
            actor=actor,
            timestamp=tx.now,
        )
        events.publish(revision)
    origin = f"snapshot {snapshot_id}" if snapshot_id is not None else path
    logger.info("store restored from %s at revision %s by %s", origin, revision, actor or "-")
    return result(reader, revision=revision)
