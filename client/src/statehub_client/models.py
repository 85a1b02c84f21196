"""Typed results: what the API returns, as frozen dataclasses built from its JSON."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True, slots=True)
class Entry:
    """A key's value. `version` counts writes to the key; `revision` is the store revision
    of its last change. `metadata` is None unless it was asked for."""

    key: str
    value: Any
    version: int
    revision: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    source: str
    metadata: dict[str, str] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Entry":
        return cls(
            key=data["key"],
            value=data["value"],
            version=data["version"],
            revision=data["revision"],
            created_at=_time(data["created_at"]),
            updated_at=_time(data["updated_at"]),
            expires_at=_time(data.get("expires_at")),
            source=data.get("source", ""),
            metadata=data.get("metadata"),
        )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing: `items` (keys or entries), the total matching, the next cursor,
    and for entries the store revision the page was read at."""

    items: list[Any]
    total: int
    next_cursor: str | None
    revision: int | None = None


@dataclass(frozen=True, slots=True)
class CasResult:
    swapped: bool
    version: int


@dataclass(frozen=True, slots=True)
class IncrResult:
    value: int
    version: int


@dataclass(frozen=True, slots=True)
class BulkResult:
    """One operation's outcome. In a non-atomic bulk a failed one has `ok` False and `error`."""

    index: int
    op: str
    key: str
    ok: bool
    version: int | None = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One change from the event stream. Delete and expire carry `new_value` None;
    `metadata` changes carry the old and new metadata maps."""

    key: str
    op: str
    old_value: Any
    new_value: Any
    version: int
    revision: int
    timestamp: float
    source: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Change":
        return cls(
            key=data["key"],
            op=data["op"],
            old_value=data.get("old_value"),
            new_value=data.get("new_value"),
            version=data["version"],
            revision=data["revision"],
            timestamp=data["timestamp"],
            source=data.get("source", ""),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "op": self.op,
            "old_value": self.old_value,
            "new_value": self.new_value,
            "version": self.version,
            "revision": self.revision,
            "timestamp": self.timestamp,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One row of a key's audit trail."""

    revision: int
    key: str
    op: str
    old_value: Any
    new_value: Any
    version: int | None
    source: str
    actor: str
    timestamp: datetime

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "HistoryEvent":
        return cls(
            revision=data["revision"],
            key=data["key"],
            op=data["op"],
            old_value=data.get("old_value"),
            new_value=data.get("new_value"),
            version=data.get("version"),
            source=data.get("source", ""),
            actor=data.get("actor", ""),
            timestamp=_time(data["timestamp"]),
        )


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts and sizes of the store as the caller sees it; `version` is the store revision."""

    total_keys: int
    total_size: int
    version: int
    metadata_keys: int
    expiring_keys: int
    snapshots: int
    last_snapshot_at: datetime | None
    event_log_size: int
    hot_keys: list[dict[str, Any]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Stats":
        return cls(
            total_keys=data["total_keys"],
            total_size=data["total_size"],
            version=data["version"],
            metadata_keys=data["metadata_keys"],
            expiring_keys=data["expiring_keys"],
            snapshots=data.get("snapshots", 0),
            last_snapshot_at=_time(data.get("last_snapshot_at")),
            event_log_size=data["event_log_size"],
            hot_keys=data.get("hot_keys", []),
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: int
    label: str
    created_at: datetime
    created_by: str
    revision: int
    key_count: int
    total_size: int
    compressed_size: int
    checksum: str
    format_version: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Snapshot":
        return cls(
            id=data["id"],
            label=data.get("label", ""),
            created_at=_time(data["created_at"]),
            created_by=data.get("created_by") or "",
            revision=data["revision"],
            key_count=data["key_count"],
            total_size=data["total_size"],
            compressed_size=data.get("compressed_size", 0),
            checksum=data["checksum"],
            format_version=data.get("format_version", 1),
        )


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a restore did (or, with `dry_run`, would do). `revision` is the store revision of
    the restore itself (None on a dry run)."""

    snapshot_id: int | None
    snapshot_revision: int
    key_count: int
    total_size: int
    checksum: str
    revision: int | None
    dry_run: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RestoreResult":
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Progress:
    """From `watch(..., include_progress=True)`: every change up to `revision` was delivered."""

    revision: int
