"""The HTTP clients: `Client` (blocking) and `AsyncClient` (asyncio), one method per API call.

Each method builds a `_Call` (what to send, whether a retry is safe, how to read the answer);
the two classes differ only in how they send it. Retries: a request that never reached the
server (connection refused) and a `rate_limited` answer are retried for every call; a broken
connection, a timeout and `unavailable` only for calls that cannot apply twice — reads, and
writes carrying a version precondition.
"""

import asyncio
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from . import errors
from .models import (
    BulkResult,
    CasResult,
    Entry,
    HistoryEvent,
    IncrResult,
    Page,
    RestoreResult,
    Snapshot,
    Stats,
)

API_PATH = "/api/v1/state"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""`cas(expected=MISSING)`: no value precondition given (None means "must be absent")."""


def _identity(data: Any) -> Any:
    return data


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    params: dict[str, str] | None = None
    body: Any = MISSING
    safe: bool = False  # retrying cannot apply a change twice
    parse: Callable[[Any], Any] = field(default=_identity)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait between attempts (exponential backoff with jitter)."""

    retries: int = 3
    backoff: float = 0.2
    max_backoff: float = 5.0
    max_retry_after: float = 30.0

    def delay(self, attempt: int, call: _Call, error: Exception) -> float | None:
        """Return seconds to wait before attempt `attempt + 1`, or None to give up."""
        if attempt >= self.retries:
            return None
        wait = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
        if isinstance(error, errors.RateLimited):
            after = error.retry_after
            if after is not None and after > self.max_retry_after:
                return None
            return max(wait, after or 0)
        if isinstance(error, _NotSent):
            return wait
        if call.safe and isinstance(error, errors.TransportError | errors.Unavailable):
            return wait
        return None


class _NotSent(errors.TransportError):
    """The connection could not be opened, so the request was never sent."""


def _key(key: str) -> str:
    return "/" + quote(key, safe=":@")


def _body(call: _Call) -> dict[str, Any]:
    if call.body is MISSING:
        return {}
    # Strict JSON: NaN and Infinity are not JSON, so they fail here rather than on the server.
    text = json.dumps(call.body, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    return {"content": text.encode(), "headers": {"Content-Type": "application/json"}}


def _transport_error(exc: httpx.TransportError, base_url: str) -> errors.TransportError:
    cls = _NotSent if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) else None
    message = f"{type(exc).__name__} talking to {base_url}: {exc}"
    return (cls or errors.TransportError)(message)


def _read(response: httpx.Response, call: _Call) -> Any:
    """Return the parsed `data` of a success envelope, or raise the error it carries."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        if not isinstance(body, dict) or body.get("success") is not True or "data" not in body:
            raise errors.ProtocolError(f"HTTP {response.status_code} without the API envelope.")
        return call.parse(body["data"])
    raise _error(response, body)


def _error(response: httpx.Response, body: Any) -> errors.StatehubError:
    error = body.get("error") if isinstance(body, dict) else None
    status = response.status_code
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
        if "retry_after" not in details and "Retry-After" in response.headers:
            try:
                details["retry_after"] = float(response.headers["Retry-After"])
            except ValueError:
                pass
        return errors.api_error(
            error["code"], str(error.get("message", "")), status=status, details=details
        )
    if status in (502, 503, 504):  # a proxy in front of a server that is down or restarting
        return errors.Unavailable(f"HTTP {status} from a proxy or gateway.", status=status)
    return errors.ProtocolError(f"HTTP {status} without the API envelope: {response.text[:200]}")


# --- the calls --------------------------------------------------------------------------------


def _page(name: str, build: Callable[[Any], Any] = _identity) -> Callable[[Any], Page]:
    def parse(data: dict[str, Any]) -> Page:
        return Page(
            items=[build(item) for item in data[name]],
            total=data["total"],
            next_cursor=data.get("next_cursor"),
            revision=data.get("revision"),
        )

    return parse


def _bulk_result(data: dict[str, Any]) -> BulkResult:
    error = None
    if not data.get("ok", False) and isinstance(data.get("error"), dict):
        body = data["error"]
        error = errors.api_error(body["code"], body.get("message", ""), details=body["details"])
    return BulkResult(
        index=data["index"],
        op=data["op"],
        key=data["key"],
        ok=bool(data.get("ok")),
        version=data.get("version"),
        error=error,
    )


def _with(body: dict[str, Any], **optional: Any) -> dict[str, Any]:
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


def _paging(prefix: str, limit: int | None, cursor: str | None, **extra: str) -> dict[str, str]:
    params = {"prefix": prefix, **extra}
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return params


class _Calls:
    """Every API call as data, shared by the blocking and the asyncio client."""

    @staticmethod
    def get(key: str, include_metadata: bool) -> _Call:
        params = {"include_metadata": "true"} if include_metadata else None
        return _Call("GET", _key(key), params=params, safe=True, parse=Entry.from_json)

    @staticmethod
    def put(key, value, metadata, ttl, expected_version, source) -> _Call:
        body = _with(
            {"value": value},
            metadata=metadata,
            ttl=ttl,
            expected_version=expected_version,
            source=source,
        )
        return _Call(
            "PUT", _key(key), body=body, safe=expected_version is not None, parse=Entry.from_json
        )

    @staticmethod
    def delete(key: str, expected_version: int | None) -> _Call:
        params = None if expected_version is None else {"expected_version": str(expected_version)}
        return _Call(
            "DELETE",
            _key(key),
            params=params,
            safe=expected_version is not None,
            parse=lambda data: None,
        )

    @staticmethod
    def cas(key, new_value, expected, expected_version, ttl, source) -> _Call:
        body: dict[str, Any] = {"key": key, "new_value": new_value}
        if expected is not MISSING:
            body["expected"] = expected
        _with(body, expected_version=expected_version, ttl=ttl, source=source)
        return _Call(
            "POST",
            "/cas",
            body=body,
            safe=expected_version is not None,
            parse=lambda data: CasResult(data["swapped"], data["version"]),
        )

    @staticmethod
    def incr(key: str, by: int, ttl: int | None, source: str | None) -> _Call:
        body = _with({"key": key, "by": by}, ttl=ttl, source=source)
        return _Call(
            "POST",
            "/incr",
            body=body,
            parse=lambda data: IncrResult(data["value"], data["version"]),
        )

    @staticmethod
    def mget(keys: Iterable[str]) -> _Call:
        def parse(data):
            return {k: Entry.from_json(e) if e else None for k, e in data["entries"].items()}

        return _Call("POST", "/mget", body={"keys": list(keys)}, safe=True, parse=parse)

    @staticmethod
    def bulk(operations: list[dict[str, Any]], atomic: bool, source: str | None) -> _Call:
        body = _with({"operations": operations, "atomic": atomic}, source=source)
        safe = atomic and all(op.get("expected_version") is not None for op in operations)
        return _Call(
            "POST",
            "/bulk",
            body=body,
            safe=safe,
            parse=lambda data: [_bulk_result(r) for r in data["results"]],
        )

    @staticmethod
    def keys_page(prefix: str, limit: int | None, cursor: str | None) -> _Call:
        return _Call(
            "GET", "/keys", params=_paging(prefix, limit, cursor), safe=True, parse=_page("keys")
        )

    @staticmethod
    def entries_page(prefix, limit, cursor, include_metadata: bool) -> _Call:
        extra = {"include_metadata": "true"} if include_metadata else {}
        return _Call(
            "GET",
            "/entries",
            params=_paging(prefix, limit, cursor, **extra),
            safe=True,
            parse=_page("entries", Entry.from_json),
        )

    @staticmethod
    def metadata(key: str) -> _Call:
        return _Call("GET", _key(key) + "/metadata", safe=True)

    @staticmethod
    def set_metadata(key: str, metadata: dict[str, str], source: str | None) -> _Call:
        return _Call(
            "PUT", _key(key) + "/metadata", body=_with({"metadata": metadata}, source=source)
        )

    @staticmethod
    def history_page(key: str, limit: int | None, cursor: str | None) -> _Call:
        params = _paging("", limit, cursor)
        del params["prefix"]
        return _Call(
            "GET",
            _key(key) + "/history",
            params=params,
            safe=True,
            parse=_page("events", HistoryEvent.from_json),
        )

    @staticmethod
    def stats() -> _Call:
        return _Call("GET", "/stats", safe=True, parse=Stats.from_json)

    @staticmethod
    def create_snapshot(label: str) -> _Call:
        return _Call("POST", "/snapshot", body={"label": label}, parse=Snapshot.from_json)

    @staticmethod
    def list_snapshots() -> _Call:
        return _Call(
            "GET",
            "/snapshots",
            safe=True,
            parse=lambda data: [Snapshot.from_json(s) for s in data["snapshots"]],
        )

    @staticmethod
    def get_snapshot(snapshot_id: int) -> _Call:
        return _Call("GET", f"/snapshots/{int(snapshot_id)}", safe=True, parse=Snapshot.from_json)

    @staticmethod
    def restore_snapshot(snapshot_id: int, dry_run: bool) -> _Call:
        return _Call(
            "POST",
            f"/snapshots/{int(snapshot_id)}/restore",
            body={"dry_run": dry_run},
            safe=dry_run,
            parse=RestoreResult.from_json,
        )

    @staticmethod
    def delete_snapshot(snapshot_id: int) -> _Call:
        return _Call("DELETE", f"/snapshots/{int(snapshot_id)}", parse=lambda data: None)


def _http_options(base_url: str, token: str, timeout: float, pool_size: int) -> dict[str, Any]:
    return {
        "base_url": base_url + API_PATH,
        "headers": {"Authorization": f"Bearer {token}", "Accept": "application/json"},
        "timeout": httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        "limits": httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
    }


class _Checksum:
    """Hash a download as it is written; compare with the server's X-Checksum-SHA256."""

    def __init__(self, response: httpx.Response) -> None:
        self.expected = response.headers.get("X-Checksum-SHA256")
        self.sha = hashlib.sha256()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.size += len(chunk)

    def check(self) -> int:
        if self.expected and self.sha.hexdigest() != self.expected:
            raise errors.ProtocolError("The downloaded snapshot does not match its checksum.")
        return self.size


class Client:
    """A blocking client of one statehub server, with pooled keep-alive connections.

    `base_url` is the server's root (`http://127.0.0.1:8081`); `token` a user's API token.
    `timeout` bounds each request in seconds; `retry` says how failed requests are retried.
    Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 10,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(**_http_options(self.base_url, token, timeout, pool_size))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call) -> Any:
        for attempt in range(self.retry.retries + 1):
            try:
                try:
                    response = self._http.request(
                        call.method, call.path, params=call.params, **_body(call)
                    )
                except httpx.TransportError as exc:
                    raise _transport_error(exc, self.base_url) from exc
                return _read(response, call)
            except errors.StatehubError as error:
                wait = self.retry.delay(attempt, call, error)
                if wait is None:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")

    # --- keys and values ------------------------------------------------------------------

    def get(self, key: str, *, include_metadata: bool = False) -> Entry:
        """Return the entry of `key`; raise `NotFound` if it is absent or expired."""
        return self._run(_Calls.get(key, include_metadata))

    def put(
        self,
        key: str,
        value: Any,
        *,
        metadata: dict[str, str] | None = None,
        ttl: int | None = None,
        expected_version: int | None = None,
        source: str | None = None,
    ) -> Entry:
        """Set `key` (no `ttl` clears its expiry); `expected_version` 0 = must not exist yet."""
        return self._run(_Calls.put(key, value, metadata, ttl, expected_version, source))

    def delete(self, key: str, *, expected_version: int | None = None) -> None:
        """Delete `key`; raise `NotFound` if it is absent."""
        self._run(_Calls.delete(key, expected_version))

    def cas(
        self,
        key: str,
        *,
        new_value: Any,
        expected: Any = MISSING,
        expected_version: int | None = None,
        ttl: int | None = None,
        source: str | None = None,
    ) -> CasResult:
        """Swap in `new_value` (None deletes) if the key holds `expected` (None: absent) or is
        at `expected_version`; raise `CasFailed` with the current value otherwise."""
        return self._run(_Calls.cas(key, new_value, expected, expected_version, ttl, source))

    def incr(
        self, key: str, by: int = 1, *, ttl: int | None = None, source: str | None = None
    ) -> IncrResult:
        """Add `by` to the integer at `key` atomically (never retried: it is not idempotent)."""
        return self._run(_Calls.incr(key, by, ttl, source))

    def mget(self, keys: Iterable[str]) -> dict[str, Entry | None]:
        return self._run(_Calls.mget(keys))

    def bulk(
        self, operations: list[dict[str, Any]], *, atomic: bool = True, source: str | None = None
    ) -> list[BulkResult]:
        """Apply `{"op": "set"|"delete"|"cas", "key", ...}` operations (at most 1000)."""
        return self._run(_Calls.bulk(operations, atomic, source))

    def metadata(self, key: str) -> dict[str, str]:
        return self._run(_Calls.metadata(key))

    def set_metadata(
        self, key: str, metadata: dict[str, str], *, source: str | None = None
    ) -> dict[str, str]:
        return self._run(_Calls.set_metadata(key, metadata, source))

    def stats(self) -> Stats:
        return self._run(_Calls.stats())

    # --- listings: one page, or an iterator over every page -------------------------------

    def keys_page(
        self, prefix: str = "", *, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        """One page of keys and the total matching."""
        return self._run(_Calls.keys_page(prefix, limit, cursor))

    def entries_page(
        self,
        prefix: str = "",
        *,
        limit: int | None = None,
        cursor: str | None = None,
        include_metadata: bool = False,
    ) -> Page:
        """One page of entries; `revision` is the store revision it was read at."""
        return self._run(_Calls.entries_page(prefix, limit, cursor, include_metadata))

    def history_page(
        self, key: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        return self._run(_Calls.history_page(key, limit, cursor))

    def keys(self, prefix: str = "", *, page_size: int | None = None) -> Iterator[str]:
        """Every key under `prefix` you may read, in order, page by page."""
        return _pages(lambda cursor: self.keys_page(prefix, limit=page_size, cursor=cursor))

    def entries(
        self, prefix: str = "", *, page_size: int | None = None, include_metadata: bool = False
    ) -> Iterator[Entry]:
        """Every entry under `prefix` you may read, in key order, page by page."""
        return _pages(
            lambda cursor: self.entries_page(
                prefix, limit=page_size, cursor=cursor, include_metadata=include_metadata
            )
        )

    def history(self, key: str, *, page_size: int | None = None) -> Iterator[HistoryEvent]:
        """The change events of `key`, newest first (staff only)."""
        return _pages(lambda cursor: self.history_page(key, limit=page_size, cursor=cursor))

    # --- snapshots (staff) ----------------------------------------------------------------

    def create_snapshot(self, label: str = "") -> Snapshot:
        return self._run(_Calls.create_snapshot(label))

    def list_snapshots(self) -> list[Snapshot]:
        return self._run(_Calls.list_snapshots())

    def get_snapshot(self, snapshot_id: int) -> Snapshot:
        return self._run(_Calls.get_snapshot(snapshot_id))

    def restore_snapshot(self, snapshot_id: int, *, dry_run: bool = False) -> RestoreResult:
        return self._run(_Calls.restore_snapshot(snapshot_id, dry_run))

    def delete_snapshot(self, snapshot_id: int) -> None:
        self._run(_Calls.delete_snapshot(snapshot_id))

    def download_snapshot(self, snapshot_id: int, destination: str | Path | IO[bytes]) -> int:
        """Stream the snapshot file to a path or binary file; verify its checksum; return bytes."""
        path = f"/snapshots/{int(snapshot_id)}/download"
        try:
            with self._http.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                    _read(response, _Call("GET", path))
                checksum = _Checksum(response)
                with _open(destination) as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        checksum.add(chunk)
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from exc
        return checksum.check()

    # --- the event stream -----------------------------------------------------------------

    def watch(
        self,
        prefixes: list[str],
        since_revision: int | None = None,
        *,
        progress_interval: float = 10.0,
        include_progress: bool = False,
    ):
        """Iterate over the changes under `prefixes`, resuming by revision through reconnects.

        `since_revision`: start after this revision (the `revision` of an `entries` listing);
        None starts from now. `progress_interval` is the server's STATE_PROGRESS_INTERVAL_SECS:
        a connection silent for twice that long is taken for dead and replaced.
        `include_progress` also yields a `Progress` whenever the revision moves on without a
        change. Raises `ResyncRequired` after a restore or when the log no longer reaches back.
        """
        from .watch import Watch

        return Watch(
            self,
            prefixes,
            since_revision,
            progress_interval=progress_interval,
            include_progress=include_progress,
        )

    def mirror(self, prefixes: list[str], *, progress_interval: float = 10.0):
        """A local dict of the entries under `prefixes`, kept in sync by `watch`."""
        from .mirror import Mirror

        return Mirror(self, prefixes, progress_interval=progress_interval)


def _pages(fetch: Callable[[str | None], Page]) -> Iterator[Any]:
    cursor = None
    while True:
        page = fetch(cursor)
        yield from page.items
        if not page.next_cursor:
            return
        cursor = page.next_cursor


class _open:
    """Open a path for writing, or use an already open binary file as it is."""

    def __init__(self, destination: str | Path | IO[bytes]) -> None:
        self.destination = destination
        self.file: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        if isinstance(self.destination, str | Path):
            self.file = open(self.destination, "wb")  # noqa: SIM115 - closed in __exit__
            return self.file
        return self.destination

    def __exit__(self, *exc_info: object) -> None:
        if self.file is not None:
            self.file.close()


class AsyncClient:
    """The asyncio twin of `Client`: the same methods, awaited; listings are async iterators."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 10,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(**_http_options(self.base_url, token, timeout, pool_size))

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call) -> Any:
        for attempt in range(self.retry.retries + 1):
            try:
                try:
                    response = await self._http.request(
                        call.method, call.path, params=call.params, **_body(call)
                    )
                except httpx.TransportError as exc:
                    raise _transport_error(exc, self.base_url) from exc
                return _read(response, call)
            except errors.StatehubError as error:
                wait = self.retry.delay(attempt, call, error)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def get(self, key: str, *, include_metadata: bool = False) -> Entry:
        return await self._run(_Calls.get(key, include_metadata))

    async def put(
        self,
        key: str,
        value: Any,
        *,
        metadata: dict[str, str] | None = None,
        ttl: int | None = None,
        expected_version: int | None = None,
        source: str | None = None,
    ) -> Entry:
        return await self._run(_Calls.put(key, value, metadata, ttl, expected_version, source))

    async def delete(self, key: str, *, expected_version: int | None = None) -> None:
        await self._run(_Calls.delete(key, expected_version))

    async def cas(
        self,
        key: str,
        *,
        new_value: Any,
        expected: Any = MISSING,
        expected_version: int | None = None,
        ttl: int | None = None,
        source: str | None = None,
    ) -> CasResult:
        return await self._run(_Calls.cas(key, new_value, expected, expected_version, ttl, source))

    async def incr(
        self, key: str, by: int = 1, *, ttl: int | None = None, source: str | None = None
    ) -> IncrResult:
        return await self._run(_Calls.incr(key, by, ttl, source))

    async def mget(self, keys: Iterable[str]) -> dict[str, Entry | None]:
        return await self._run(_Calls.mget(keys))

    async def bulk(
        self, operations: list[dict[str, Any]], *, atomic: bool = True, source: str | None = None
    ) -> list[BulkResult]:
        return await self._run(_Calls.bulk(operations, atomic, source))

    async def metadata(self, key: str) -> dict[str, str]:
        return await self._run(_Calls.metadata(key))

    async def set_metadata(
        self, key: str, metadata: dict[str, str], *, source: str | None = None
    ) -> dict[str, str]:
        return await self._run(_Calls.set_metadata(key, metadata, source))

    async def stats(self) -> Stats:
        return await self._run(_Calls.stats())

    async def keys_page(
        self, prefix: str = "", *, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        return await self._run(_Calls.keys_page(prefix, limit, cursor))

    async def entries_page(
        self,
        prefix: str = "",
        *,
        limit: int | None = None,
        cursor: str | None = None,
        include_metadata: bool = False,
    ) -> Page:
        return await self._run(_Calls.entries_page(prefix, limit, cursor, include_metadata))

    async def history_page(
        self, key: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        return await self._run(_Calls.history_page(key, limit, cursor))

    def keys(self, prefix: str = "", *, page_size: int | None = None) -> AsyncIterator[str]:
        return _apages(lambda cursor: self.keys_page(prefix, limit=page_size, cursor=cursor))

    def entries(
        self, prefix: str = "", *, page_size: int | None = None, include_metadata: bool = False
    ) -> AsyncIterator[Entry]:
        return _apages(
            lambda cursor: self.entries_page(
                prefix, limit=page_size, cursor=cursor, include_metadata=include_metadata
            )
        )

    def history(self, key: str, *, page_size: int | None = None) -> AsyncIterator[HistoryEvent]:
        return _apages(lambda cursor: self.history_page(key, limit=page_size, cursor=cursor))

    async def create_snapshot(self, label: str = "") -> Snapshot:
        return await self._run(_Calls.create_snapshot(label))

    async def list_snapshots(self) -> list[Snapshot]:
        return await self._run(_Calls.list_snapshots())

    async def get_snapshot(self, snapshot_id: int) -> Snapshot:
        return await self._run(_Calls.get_snapshot(snapshot_id))

    async def restore_snapshot(self, snapshot_id: int, *, dry_run: bool = False) -> RestoreResult:
        return await self._run(_Calls.restore_snapshot(snapshot_id, dry_run))

    async def delete_snapshot(self, snapshot_id: int) -> None:
        await self._run(_Calls.delete_snapshot(snapshot_id))

    async def download_snapshot(self, snapshot_id: int, destination: str | Path | IO[bytes]) -> int:
        path = f"/snapshots/{int(snapshot_id)}/download"
        try:
            async with self._http.stream("GET", path) as response:
                if not response.is_success:
                    await response.aread()
                    _read(response, _Call("GET", path))
                checksum = _Checksum(response)
                with _open(destination) as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
                        checksum.add(chunk)
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from exc
        return checksum.check()

    def watch(
        self,
        prefixes: list[str],
        since_revision: int | None = None,
        *,
        progress_interval: float = 10.0,
        include_progress: bool = False,
    ):
        """`async for change in client.watch(...)`: see `Client.watch`."""
        from .watch import AsyncWatch

        return AsyncWatch(
            self,
            prefixes,
            since_revision,
            progress_interval=progress_interval,
            include_progress=include_progress,
        )

    def mirror(self, prefixes: list[str], *, progress_interval: float = 10.0):
        from .mirror import AsyncMirror

        return AsyncMirror(self, prefixes, progress_interval=progress_interval)


async def _apages(fetch) -> AsyncIterator[Any]:
    cursor = None
    while True:
        page = await fetch(cursor)
        for item in page.items:
            yield item
        if not page.next_cursor:
            return
        cursor = page.next_cursor
