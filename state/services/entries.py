"""Entry operations: set, delete, compare-and-swap, incr, metadata and bulk."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from django.conf import settings
from django.db import connection

from .. import rules
from ..exceptions import (
    CasFailed,
    NotANumber,
    NotFound,
    StateError,
    ValidationFailed,
    VersionConflict,
)
from ..models import StateEntry
from .writes import _Transaction, _write


def _live_entry(tx: _Transaction, key: str) -> StateEntry | None:
    """Return the entry for `key` under the write lock, expiring it first if its TTL passed."""
    # Raw SQL: this runs while the store lock is held, so its cost caps write throughput;
    # the ORM's query compiler was most of it in the bench profile.
    sql = f'SELECT * FROM {StateEntry._meta.db_table} WHERE "key" = %s'
    if connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    entry = next(iter(StateEntry.objects.raw(sql, [key])), None)
    if entry is not None and entry.expires_at is not None and entry.expires_at <= tx.now:
        _remove(tx, entry, op="expire", source="ttl")
        return None
    return entry


def _remove(tx: _Transaction, entry: StateEntry, *, op: str, source: str) -> None:
    revision = tx.next_revision()
    StateEntry.objects.filter(key=entry.key).delete()
    tx.record(
        revision=revision,
        op=op,
        key=entry.key,
        old_value=entry.value,
        new_value=None,
        version=entry.version,
        source=source,
    )


def _check_expected_version(entry: StateEntry | None, expected: int | None) -> None:
    current = entry.version if entry is not None else 0
    if expected is not None and expected != current:
        raise VersionConflict(
            f"Expected version {expected}, but the current version is {current}.",
            current_version=current,
        )


def _expiry(tx: _Transaction, ttl: int | None) -> datetime | None:
    return tx.now + timedelta(seconds=ttl) if ttl is not None else None


def _put(
    tx: _Transaction,
    entry: StateEntry | None,
    *,
    key: str,
    value: Any,
    size: int,
    metadata: dict[str, str] | None,
    expires_at: datetime | None,
    source: str,
) -> StateEntry:
    revision = tx.next_revision()
    if entry is None:
        old_value = None
        entry = StateEntry.objects.create(
            key=key,
            value=value,
            metadata=metadata or {},
            version=1,
            revision=revision,
            created_at=tx.now,
            updated_at=tx.now,
            expires_at=expires_at,
            source=source,
            size=size,
        )
    else:
        old_value = entry.value
        entry.value = value
        if metadata is not None:
            entry.metadata = metadata
        entry.version += 1
        entry.revision = revision
        entry.updated_at = tx.now
        entry.expires_at = expires_at
        entry.source = source
        entry.size = size
        entry.save(
            update_fields=[
                "value", "metadata", "version", "revision", "updated_at", "expires_at", "source",
                "size",
            ]
        )  # fmt: skip
    tx.record(
        revision=revision,
        op="set",
        key=key,
        old_value=old_value,
        new_value=value,
        version=entry.version,
        source=source,
    )
    return entry


# --- operations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetRequest:
    """A validated `set`: what `state_set` and bulk `set` operations apply."""

    key: str
    value: Any
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
    ) -> "SetRequest":
        clean_metadata = rules.clean_metadata(metadata) if metadata is not None else None
        clean_ttl = rules.clean_ttl(ttl)
        if clean_metadata and "ttl" in clean_metadata:
            # Checked even when `ttl` is given (and wins): a bad item is never stored.
            metadata_ttl = rules.clean_metadata_ttl(clean_metadata["ttl"])
            clean_ttl = metadata_ttl if clean_ttl is None else clean_ttl
        return cls(
            key=rules.validate_key(key),
            value=value,
            size=rules.value_size(value),
            metadata=clean_metadata,
            ttl=clean_ttl,
            expected_version=rules.clean_version(expected_version),
            source=rules.clean_source(source),
        )

    def apply(self, tx: _Transaction) -> StateEntry:
        entry = _live_entry(tx, self.key)
        _check_expected_version(entry, self.expected_version)
        return _put(
            tx,
            entry,
            key=self.key,
            value=self.value,
            size=self.size,
            metadata=self.metadata,
            expires_at=_expiry(tx, self.ttl),
            source=self.source,
        )


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
    request = SetRequest.clean(
        key=key,
        value=value,
        metadata=metadata,
        ttl=ttl,
        expected_version=expected_version,
        source=source,
    )
    with _write(actor=actor) as tx:
        entry = request.apply(tx)
    return entry, entry.version == 1


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    key: str
    expected_version: int | None
    source: str

    @classmethod
    def clean(cls, *, key: Any, expected_version: Any = None, source: Any = "") -> "DeleteRequest":
        return cls(
            key=rules.validate_key(key),
            expected_version=rules.clean_version(expected_version),
            source=rules.clean_source(source),
        )

    def apply(self, tx: _Transaction) -> StateEntry:
        entry = _live_entry(tx, self.key)
        if entry is None:
            raise NotFound(f"Key '{self.key}' does not exist.", key=self.key)
        _check_expected_version(entry, self.expected_version)
        _remove(tx, entry, op="delete", source=self.source)
        return entry


def state_delete(
    *, key: str, expected_version: int | None = None, source: str = "", actor: str = ""
) -> StateEntry:
    """Delete `key` (it must exist); return the entry as it was."""
    request = DeleteRequest.clean(key=key, expected_version=expected_version, source=source)
    with _write(actor=actor) as tx:
        return request.apply(tx)


@dataclass(frozen=True, slots=True)
class CasResult:
    swapped: bool
    version: int
    entry: StateEntry | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class CasRequest:
    key: str
    expected: Any
    expected_version: int | None
    new_value: Any
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
    ) -> "CasRequest":
        key = rules.validate_key(key)
        if (expected is rules.MISSING) == (expected_version is None):
            raise ValidationFailed(
                "Give exactly one of 'expected' (a value, or null for absent) and "
                "'expected_version'.",
                field="expected",
            )
        return cls(
            key=key,
            expected=expected,
            expected_version=rules.clean_version(expected_version),
            new_value=new_value,
            size=rules.value_size(new_value) if new_value is not None else 0,
            ttl=rules.clean_ttl(ttl),
            source=rules.clean_source(source),
        )

    def apply(self, tx: _Transaction) -> CasResult:
        entry = _live_entry(tx, self.key)
        if self.expected_version is not None:
            matches = (entry.version if entry else 0) == self.expected_version
        elif self.expected is None:
            matches = entry is None
        else:
            matches = entry is not None and rules.json_equal(entry.value, self.expected)
        if not matches:
            raise CasFailed(
                f"Key '{self.key}' does not hold the expected value.",
                current=entry.value if entry else None,
                version=entry.version if entry else 0,
            )
        if self.new_value is None:
            if entry is not None:
                _remove(tx, entry, op="delete", source=self.source)
            return CasResult(swapped=True, version=0)
        entry = _put(
            tx,
            entry,
            key=self.key,
            value=self.new_value,
            size=self.size,
            metadata=None,
            expires_at=_expiry(tx, self.ttl),
            source=self.source,
        )
        return CasResult(swapped=True, version=entry.version, entry=entry)


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
    request = CasRequest.clean(
        key=key,
        new_value=new_value,
        expected=expected,
        expected_version=expected_version,
        ttl=ttl,
        source=source,
    )
    with _write(actor=actor) as tx:
        return request.apply(tx)


def state_incr(
    *, key: str, by: int = 1, ttl: int | None = None, source: str = "", actor: str = ""
) -> StateEntry:
    """Add `by` to the integer at `key` atomically (absent counts as 0; ttl applies on create)."""
    key = rules.validate_key(key)
    by = rules.clean_int(by, field="by")
    ttl = rules.clean_ttl(ttl)
    source = rules.clean_source(source)
    with _write(actor=actor) as tx:
        entry = _live_entry(tx, key)
        if entry is None:
            value, expires_at, metadata = by, _expiry(tx, ttl), None
        else:
            current = entry.value
            if isinstance(current, bool) or not isinstance(current, int):
                raise NotANumber(
                    f"Key '{key}' holds a {type(current).__name__}, not an integer.",
                    current=current,
                )
            value, expires_at, metadata = current + by, entry.expires_at, entry.metadata
            if not rules.INT64_MIN <= value <= rules.INT64_MAX:
                raise NotANumber(f"Incrementing '{key}' would overflow 64 bits.", current=current)
        return _put(
            tx,
            entry,
            key=key,
            value=value,
            size=len(str(value)),
            metadata=metadata,
            expires_at=expires_at,
            source=source,
        )


def state_set_metadata(
    *, key: str, metadata: dict[str, str], source: str = "", actor: str = ""
) -> StateEntry:
    """Replace the metadata map of `key`; a "ttl" item also resets its expiry."""
    key = rules.validate_key(key)
    metadata = rules.clean_metadata(metadata)
    ttl = rules.clean_metadata_ttl(metadata["ttl"]) if "ttl" in metadata else None
    source = rules.clean_source(source)
    with _write(actor=actor) as tx:
        entry = _live_entry(tx, key)
        if entry is None:
            raise NotFound(f"Key '{key}' does not exist.", key=key)
        old = entry.metadata
        revision = tx.next_revision()
        entry.metadata = metadata
        entry.revision = revision
        entry.updated_at = tx.now
        if ttl is not None:
            entry.expires_at = _expiry(tx, ttl)
        entry.save(update_fields=["metadata", "revision", "updated_at", "expires_at"])
        tx.record(
            revision=revision,
            op="metadata",
            key=key,
            old_value=old,
            new_value=metadata,
            version=entry.version,
            source=source,
        )
        return entry


# --- bulk ---------------------------------------------------------------------------------

BulkRequest = SetRequest | DeleteRequest | CasRequest


@dataclass(frozen=True, slots=True)
class BulkResult:
    index: int
    op: Literal["set", "delete", "cas"]
    key: str
    version: int | None = None
    error: StateError | None = None


def _clean_bulk_operation(index: int, operation: dict[str, Any]) -> BulkRequest:
    try:
        fields = dict(operation)
        op = fields.pop("op", None)
        if op == "set":
            return SetRequest.clean(**fields)
        if op == "delete":
            return DeleteRequest.clean(**fields)
        if op == "cas":
            return CasRequest.clean(**fields)
        raise ValidationFailed("op must be one of 'set', 'delete', 'cas'.", field="op")
    except TypeError as exc:
        raise ValidationFailed(
            f"Operation has missing or unexpected fields: {exc}", index=index
        ) from exc
    except StateError as exc:
        exc.details["index"] = index
        raise


def _apply_bulk_operation(tx: _Transaction, index: int, request: BulkRequest) -> BulkResult:
    op: Literal["set", "delete", "cas"]
    if isinstance(request, SetRequest):
        op, version = "set", request.apply(tx).version
    elif isinstance(request, DeleteRequest):
        request.apply(tx)
        op, version = "delete", 0
    else:
        op, version = "cas", request.apply(tx).version
    return BulkResult(index=index, op=op, key=request.key, version=version)


def state_bulk(
    *, operations: list[dict[str, Any]], atomic: bool = True, source: str = "", actor: str = ""
) -> list[BulkResult]:
    """Apply set/delete/cas operations in order: all-or-nothing when `atomic`, else each alone."""
    if len(operations) > settings.STATE_MAX_BULK_OPERATIONS:
        raise ValidationFailed(
            f"At most {settings.STATE_MAX_BULK_OPERATIONS} operations per request.",
            field="operations",
        )
    requests = [
        _clean_bulk_operation(index, {"source": source, **operation})
        for index, operation in enumerate(operations)
    ]
    if atomic:
        with _write(actor=actor) as tx:
            results = []
            for index, request in enumerate(requests):
                try:
                    results.append(_apply_bulk_operation(tx, index, request))
                except StateError as exc:
                    exc.details["index"] = index
                    raise
            return results
    results = []
    for index, request in enumerate(requests):
        try:
            with _write(actor=actor) as tx:
                results.append(_apply_bulk_operation(tx, index, request))
        except StateError as exc:
            results.append(
                BulkResult(index=index, op=_op_name(request), key=request.key, error=exc)
            )
    return results


def _op_name(request: BulkRequest) -> Literal["set", "delete", "cas"]:
    if isinstance(request, SetRequest):
        return "set"
    return "delete" if isinstance(request, DeleteRequest) else "cas"
