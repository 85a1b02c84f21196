"""Entry operations: set, delete, compare-and-swap, incr and metadata, alone or in a bulk.

Each kind of operation is one class in `OPERATIONS`: `clean()` checks its fields with the
pure rules before any lock is taken, `apply()` runs it against the write batch in memory.
A single write is a batch of one operation and a bulk a batch of many; both are committed by
`writes.commit`, so concurrent writers share transactions (group commit).
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.conf import settings

from .. import crypto, rules
from ..exceptions import (
    CasFailed,
    NotANumber,
    NotFound,
    StateError,
    ValidationFailed,
    VersionConflict,
)
from ..models import StateEntry, StateEvent
from . import writes
from .writes import Batch, Row

Op = StateEvent.Op


def _check_expected_version(row: Row | None, expected: int | None) -> None:
    current = row.version if row is not None else 0
    if expected is not None and expected != current:
        raise VersionConflict(
            f"Expected version {expected}, but the current version is {current}.",
            current_version=current,
        )


def _expiry(batch: Batch, ttl: int | None) -> datetime | None:
    return batch.now + timedelta(seconds=ttl) if ttl is not None else None


# --- the operation kinds ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetOp:
    """Store a value (version +1, or 1 when created); no ttl clears the expiry."""

    kind: ClassVar[str] = "set"
    key: str
    value: Any
    text: str
    size: int
    metadata: dict[str, str] | None
    ttl: int | None
    expected_version: int | None
    source: str

    @classmethod
    def clean(
        cls,
        *,
        key: Any,
        value: Any,
        metadata: Any = None,
        ttl: Any = None,
        expected_version: Any = None,
        source: Any = "",
    ) -> "SetOp":
        clean_metadata = rules.clean_metadata(metadata) if metadata is not None else None
        clean_ttl = rules.clean_ttl(ttl)
        if clean_metadata and "ttl" in clean_metadata:
            # Checked even when `ttl` is given (and wins): a bad item is never stored.
            metadata_ttl = rules.clean_metadata_ttl(clean_metadata["ttl"])
            clean_ttl = metadata_ttl if clean_ttl is None else clean_ttl
        key = rules.validate_key(key)
        text, size = rules.encode_storable(value)
        text = crypto.seal_text(key, text)  # crypto: stored sealed (size stays the plain size)
        return cls(
            key=key,
            value=value,
            text=text,
            size=size,
            metadata=clean_metadata,
            ttl=clean_ttl,
            expected_version=rules.clean_version(expected_version),
            source=rules.clean_source(source),
        )

    def apply(self, batch: Batch) -> Row:
        row = batch.live(self.key)
        _check_expected_version(row, self.expected_version)
        return batch.put(
            row, key=self.key, value=self.value, text=self.text, size=self.size,
            metadata=self.metadata, expires_at=_expiry(batch, self.ttl), source=self.source,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeleteOp:
    """Delete a key that exists; return it as it was."""

    kind: ClassVar[str] = "delete"
    key: str
    expected_version: int | None
    source: str

    @classmethod
    def clean(cls, *, key: Any, expected_version: Any = None, source: Any = "") -> "DeleteOp":
        return cls(
            key=rules.validate_key(key),
            expected_version=rules.clean_version(expected_version),
            source=rules.clean_source(source),
        )

    def apply(self, batch: Batch) -> Row:
        row = batch.live(self.key)
        if row is None:
            raise NotFound(f"Key '{self.key}' does not exist.", key=self.key)
        _check_expected_version(row, self.expected_version)
        batch.remove(row, op=Op.DELETE, source=self.source)
        return row


@dataclass(frozen=True, slots=True)
class CasResult:
    swapped: bool
    version: int
    entry: StateEntry | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class CasOp:
    """Swap in a value (None deletes) only if the key holds `expected` / `expected_version`."""

    kind: ClassVar[str] = "cas"
    key: str
    expected: Any
    expected_version: int | None
    new_value: Any
    text: str | None
    size: int
    ttl: int | None
    source: str

    @classmethod
    def clean(
        cls,
        *,
        key: Any,
        new_value: Any,
        expected: Any = rules.MISSING,
        expected_version: Any = None,
        ttl: Any = None,
        source: Any = "",
    ) -> "CasOp":
        key = rules.validate_key(key)
        if (expected is rules.MISSING) == (expected_version is None):
            raise ValidationFailed(
                "Give exactly one of 'expected' (a value, or null for absent) and "
                "'expected_version'.",
                field="expected",
            )
        text, size = rules.encode_storable(new_value) if new_value is not None else (None, 0)
        text = crypto.seal_text(key, text)  # crypto: stored sealed (size stays the plain size)
        return cls(
            key=key,
            expected=expected,
            expected_version=rules.clean_version(expected_version),
            new_value=new_value,
            text=text,
            size=size,
            ttl=rules.clean_ttl(ttl),
            source=rules.clean_source(source),
        )

    def apply(self, batch: Batch) -> CasResult:
        row = batch.live(self.key)
        if self.expected_version is not None:
            matches = (row.version if row else 0) == self.expected_version
        elif self.expected is None:
            matches = row is None
        else:
            matches = row is not None and rules.json_equal(row.value, self.expected)
        if not matches:
            raise CasFailed(
                f"Key '{self.key}' does not hold the expected value.",
                current=row.value if row else None,
                version=row.version if row else 0,
            )
        if self.new_value is None:
            if row is not None:
                batch.remove(row, op=Op.DELETE, source=self.source)
            return CasResult(swapped=True, version=0)
        row = batch.put(
            row, key=self.key, value=self.new_value, text=self.text, size=self.size,  # type: ignore[arg-type]
            metadata=None, expires_at=_expiry(batch, self.ttl), source=self.source,
        )  # fmt: skip
        return CasResult(swapped=True, version=row.version, entry=row.entry())


@dataclass(frozen=True, slots=True)
class IncrOp:
    """Add to the integer at a key (absent counts as 0; ttl applies when it creates the key)."""

    kind: ClassVar[str] = "incr"
    key: str
    by: int
    ttl: int | None
    source: str

    @classmethod
    def clean(cls, *, key: Any, by: Any = 1, ttl: Any = None, source: Any = "") -> "IncrOp":
        return cls(
            key=rules.validate_key(key),
            by=rules.clean_int(by, field="by"),
            ttl=rules.clean_ttl(ttl),
            source=rules.clean_source(source),
        )

    def apply(self, batch: Batch) -> Row:
        row = batch.live(self.key)
        if row is None:
            value, expires_at, metadata = self.by, _expiry(batch, self.ttl), None
        else:
            current = row.value
            if isinstance(current, bool) or not isinstance(current, int):
                raise NotANumber(
                    f"Key '{self.key}' holds a {type(current).__name__}, not an integer.",
                    current=current,
                )
            value, expires_at, metadata = current + self.by, row.expires_at, row.metadata
            if not rules.INT64_MIN <= value <= rules.INT64_MAX:
                raise NotANumber(
                    f"Incrementing '{self.key}' would overflow 64 bits.", current=current
                )
        text = crypto.seal_text(self.key, str(value))  # crypto: stored sealed
        return batch.put(
            row, key=self.key, value=value, text=text, size=len(str(value)), metadata=metadata,
            expires_at=expires_at, source=self.source,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetadataOp:
    """Replace a key's metadata map; a "ttl" item also resets its expiry."""

    kind: ClassVar[str] = "metadata"
    key: str
    metadata: dict[str, str]
    ttl: int | None
    source: str

    @classmethod
    def clean(cls, *, key: Any, metadata: Any, source: Any = "") -> "MetadataOp":
        key = rules.validate_key(key)
        metadata = rules.clean_metadata(metadata)
        ttl = rules.clean_metadata_ttl(metadata["ttl"]) if "ttl" in metadata else None
        return cls(key=key, metadata=metadata, ttl=ttl, source=rules.clean_source(source))

    def apply(self, batch: Batch) -> Row:
        row = batch.live(self.key)
        if row is None:
            raise NotFound(f"Key '{self.key}' does not exist.", key=self.key)
        expires_at = _expiry(batch, self.ttl) if self.ttl is not None else row.expires_at
        return batch.set_metadata(
            row, metadata=self.metadata, expires_at=expires_at, source=self.source
        )


Operation = SetOp | DeleteOp | CasOp | IncrOp | MetadataOp
# The one registry of operation kinds, for single writes and bulks alike.
OPERATIONS: dict[str, type[Operation]] = {
    kind.kind: kind for kind in (SetOp, DeleteOp, CasOp, IncrOp, MetadataOp)
}
BULK_OPERATIONS = ("set", "delete", "cas")


def _commit_one(operation: Operation, *, actor: str) -> Any:
    return writes.commit(actor=actor, keys=[operation.key], apply=operation.apply)


# --- single writes ------------------------------------------------------------------------


def state_set(
    *,
    key: str,
    value: Any,
    metadata: dict[str, str] | None = None,
    ttl: int | None = None,
    expected_version: int | None = None,
    source: str = "",
    actor: str = "",
) -> tuple[StateEntry, bool]:
    """Store `value` under `key` (version +1, or 1 when created); return (entry, created)."""
    operation = SetOp.clean(
        key=key, value=value, metadata=metadata, ttl=ttl, expected_version=expected_version,
        source=source,
    )  # fmt: skip
    entry = _commit_one(operation, actor=actor).entry()
    return entry, entry.version == 1


def state_delete(
    *, key: str, expected_version: int | None = None, source: str = "", actor: str = ""
) -> StateEntry:
    """Delete `key` (it must exist); return the entry as it was."""
    operation = DeleteOp.clean(key=key, expected_version=expected_version, source=source)
    return _commit_one(operation, actor=actor).entry()


def state_cas(
    *,
    key: str,
    new_value: Any,
    expected: Any = rules.MISSING,
    expected_version: int | None = None,
    ttl: int | None = None,
    source: str = "",
    actor: str = "",
) -> CasResult:
    """Swap in `new_value` (None deletes) only if the key holds `expected` / `expected_version`."""
    operation = CasOp.clean(
        key=key, new_value=new_value, expected=expected, expected_version=expected_version,
        ttl=ttl, source=source,
    )  # fmt: skip
    return _commit_one(operation, actor=actor)


def state_incr(
    *, key: str, by: int = 1, ttl: int | None = None, source: str = "", actor: str = ""
) -> StateEntry:
    """Add `by` to the integer at `key` atomically (absent counts as 0; ttl applies on create)."""
    operation = IncrOp.clean(key=key, by=by, ttl=ttl, source=source)
    return _commit_one(operation, actor=actor).entry()


def state_set_metadata(
    *, key: str, metadata: dict[str, str], source: str = "", actor: str = ""
) -> StateEntry:
    """Replace the metadata map of `key`; a "ttl" item also resets its expiry."""
    operation = MetadataOp.clean(key=key, metadata=metadata, source=source)
    return _commit_one(operation, actor=actor).entry()


# --- bulk ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BulkResult:
    index: int
    op: str
    key: str
    version: int | None = None
    error: StateError | None = None


def _clean_bulk_operation(index: int, operation: dict[str, Any]) -> Operation:
    try:
        fields = dict(operation)
        kind = fields.pop("op", None)
        if kind not in BULK_OPERATIONS:
            raise ValidationFailed(
                f"op must be one of {', '.join(repr(k) for k in BULK_OPERATIONS)}.", field="op"
            )
        return OPERATIONS[kind].clean(**fields)
    except TypeError as exc:
        raise ValidationFailed(
            f"Operation has missing or unexpected fields: {exc}", index=index
        ) from exc
    except StateError as exc:
        exc.details["index"] = index
        raise


def _version_after(operation: Operation, outcome: Any) -> int:
    if isinstance(operation, DeleteOp):
        return 0
    return outcome.version


def state_bulk(
    *, operations: list[dict[str, Any]], atomic: bool = True, source: str = "", actor: str = ""
) -> list[BulkResult]:
    """Apply set/delete/cas operations in order: all-or-nothing when `atomic`, else each alone.

    One transaction either way, written with a constant number of statements; when not
    atomic, a failed operation is forgotten on its own and reported in its result.
    """
    if len(operations) > settings.STATE_MAX_BULK_OPERATIONS:
        raise ValidationFailed(
            f"At most {settings.STATE_MAX_BULK_OPERATIONS} operations per request.",
            field="operations",
        )
    cleaned = [
        _clean_bulk_operation(index, {"source": source, **operation})
        for index, operation in enumerate(operations)
    ]

    def apply_one(batch: Batch, operation: Operation) -> int:
        if atomic:
            # All-or-nothing already: the group commit undoes this member's every change on
            # a failure, so no savepoint per operation (its context manager showed up in
            # py-spy's samples of a 1,000-op bulk).
            return _version_after(operation, operation.apply(batch))
        with batch.savepoint():
            return _version_after(operation, operation.apply(batch))

    def apply(batch: Batch) -> list[BulkResult]:
        results = []
        for index, operation in enumerate(cleaned):
            try:
                version = apply_one(batch, operation)
            except StateError as exc:
                if atomic:
                    exc.details["index"] = index
                    raise
                results.append(
                    BulkResult(index=index, op=operation.kind, key=operation.key, error=exc)
                )
            else:
                results.append(
                    BulkResult(index=index, op=operation.kind, key=operation.key, version=version)
                )
        return results

    return writes.commit(actor=actor, keys=[op.key for op in cleaned], apply=apply)
