"""Every method of `Client` and `AsyncClient` against a real server, and the error classes."""

import asyncio
import hashlib
import io
import socket
from datetime import UTC, datetime, timedelta

import pytest

import statehub_client as sh
from statehub_client import AsyncClient, Client, RetryPolicy

pytestmark = pytest.mark.e2e


def test_put_get_delete_round_trip_with_typed_entry(staff):
    created = staff.put("cl:basic", {"a": [1, 2]}, metadata={"owner": "t"}, ttl=60, source="test")
    assert isinstance(created, sh.Entry)
    assert (created.key, created.value, created.version) == ("cl:basic", {"a": [1, 2]}, 1)
    assert created.metadata == {"owner": "t"} and created.source == "test"
    assert timedelta(seconds=55) < created.expires_at - datetime.now(UTC) <= timedelta(seconds=60)
    updated = staff.put("cl:basic", "two")
    assert (updated.version, updated.expires_at) == (2, None)
    assert updated.revision > created.revision

    read = staff.get("cl:basic", include_metadata=True)
    assert (read.value, read.version, read.revision) == ("two", 2, updated.revision)
    assert read.metadata == {"owner": "t"}
    assert staff.get("cl:basic").metadata is None

    staff.delete("cl:basic")
    with pytest.raises(sh.NotFound) as absent:
        staff.get("cl:basic")
    assert absent.value.status == 404 and absent.value.details["key"] == "cl:basic"


def test_version_conflict_carries_the_current_version(staff):
    staff.put("cl:locked", 1)
    staff.put("cl:locked", 2, expected_version=1)
    with pytest.raises(sh.VersionConflict) as conflict:
        staff.put("cl:locked", 3, expected_version=1)
    assert conflict.value.current_version == 2 and conflict.value.status == 409
    with pytest.raises(sh.VersionConflict) as exists:
        staff.put("cl:locked", 3, expected_version=0)
    assert exists.value.current_version == 2
    with pytest.raises(sh.VersionConflict):
        staff.delete("cl:locked", expected_version=1)
    staff.delete("cl:locked", expected_version=2)


def test_cas_by_value_and_by_version(staff):
    assert staff.cas("cl:cas", expected=None, new_value=10) == sh.CasResult(True, 1)
    assert staff.cas("cl:cas", expected=10, new_value=11).version == 2
    with pytest.raises(sh.CasFailed) as failed:
        staff.cas("cl:cas", expected=10, new_value=12)
    assert (failed.value.current, failed.value.version) == (11, 2)
    assert staff.cas("cl:cas", expected_version=2, new_value=12).swapped
    assert staff.cas("cl:cas", expected=12, new_value=None).swapped  # null deletes
    with pytest.raises(sh.NotFound):
        staff.get("cl:cas")


def test_incr_and_not_a_number(staff):
    assert staff.incr("cl:counter") == sh.IncrResult(1, 1)
    assert staff.incr("cl:counter", 41).value == 42
    staff.put("cl:text", "x")
    with pytest.raises(sh.NotANumber):
        staff.incr("cl:text")


def test_mget_bulk_metadata_stats_history(staff):
    staff.put("cl:m1", 1)
    found = staff.mget(["cl:m1", "cl:m2"])
    assert found["cl:m1"].value == 1 and found["cl:m2"] is None

    results = staff.bulk(
        [
            {"op": "set", "key": "cl:b1", "value": "x"},
            {"op": "cas", "key": "cl:m1", "expected": 99, "new_value": 2},
            {"op": "delete", "key": "cl:m1"},
        ],
        atomic=False,
    )
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, sh.CasFailed) and results[1].error.current == 1
    with pytest.raises(sh.CasFailed) as atomic:
        staff.bulk(
            [
                {"op": "set", "key": "cl:b2", "value": 1},
                {"op": "cas", "key": "cl:b1", "expected": "no", "new_value": 1},
            ]
        )
    assert atomic.value.details["index"] == 1
    with pytest.raises(sh.NotFound):
        staff.get("cl:b2")  # nothing applied

    assert staff.set_metadata("cl:b1", {"team": "x"}) == {"team": "x"}
    assert staff.metadata("cl:b1") == {"team": "x"}
    history = list(staff.history("cl:b1", page_size=1))
    assert [(e.op, e.revision > 0) for e in history] == [("metadata", True), ("set", True)]
    assert history[0].revision > history[1].revision and history[0].actor == "e2e-staff"

    stats = staff.stats()
    assert isinstance(stats, sh.Stats) and stats.total_keys >= 1
    assert stats.version >= history[0].revision


def test_keys_and_entries_iterate_over_every_page(staff):
    written = [f"cl:page:{i:03d}" for i in range(23)]
    staff.bulk([{"op": "set", "key": key, "value": i} for i, key in enumerate(written)])
    assert list(staff.keys("cl:page:", page_size=5)) == written
    entries = list(staff.entries("cl:page:", page_size=4, include_metadata=True))
    assert [(e.key, e.value, e.metadata) for e in entries] == [
        (key, i, {}) for i, key in enumerate(written)
    ]
    page = staff.entries_page("cl:page:", limit=10)
    assert (len(page.items), page.total, page.next_cursor is not None) == (10, 23, True)
    assert page.revision >= max(e.revision for e in entries)


def test_error_classes_for_each_kind_of_refusal(staff, alice, server, store):
    with pytest.raises(sh.InvalidKey):
        staff.put("-bad key", 1)
    with pytest.raises(sh.ValidationError) as invalid:
        staff.put("cl:v", 1, ttl=-5)
    assert "ttl" in invalid.value.fields
    with pytest.raises(sh.ValueTooLarge):
        staff.put("cl:big", "x" * (1024 * 1024 + 1))
    with pytest.raises(sh.PermissionDenied):
        alice.put("global:nope", 1)
    with pytest.raises(sh.PermissionDenied):
        alice.list_snapshots()
    with Client(server.url, "not-a-token") as stranger, pytest.raises(sh.Unauthenticated):
        stranger.get("global:x")
    # The client only offers what the API allows; these two come from a hand-made request.
    call = sh.client._Call("POST", "/cl:any")
    with pytest.raises(sh.MethodNotAllowed) as wrong_method:
        staff._run(call)
    assert wrong_method.value.status == 405
    raw = sh.client._Call("PUT", "/cl:any")
    response = staff._http.request(
        raw.method, raw.path, content=b"value=1", headers={"Content-Type": "text/plain"}
    )
    with pytest.raises(sh.UnsupportedMediaType):
        sh.client._read(response, raw)
    for code, cls in sh.errors.ERRORS.items():
        assert cls.code == code and issubclass(cls, sh.ApiError)
    assert {"rate_limited", "unavailable", "internal_error"} <= set(sh.errors.ERRORS)


def test_error_envelope_details_reach_rate_limited_and_unavailable():
    # No server can be made to throttle or lose its database on demand here, so the
    # translation of these two envelopes is checked on the envelope itself.
    import httpx

    request = httpx.Request("GET", "http://127.0.0.1/api/v1/state/x")
    limited = httpx.Response(
        429,
        request=request,
        headers={"Retry-After": "3"},
        json={
            "success": False,
            "error": {"code": "rate_limited", "message": "slow", "details": {}},
        },
    )
    with pytest.raises(sh.RateLimited) as caught:
        sh.client._read(limited, sh.client._Call("GET", "/x"))
    assert caught.value.retry_after == 3.0
    gateway = httpx.Response(502, request=request, text="<html>bad gateway</html>")
    with pytest.raises(sh.Unavailable):
        sh.client._read(gateway, sh.client._Call("GET", "/x"))


def test_retry_policy_retries_only_what_cannot_apply_twice():
    policy = RetryPolicy(retries=2)
    read, write = sh.client._Calls.get("k", False), sh.client._Calls.incr("k", 1, None, None)
    guarded = sh.client._Calls.put("k", 1, None, None, 3, None)
    broken = sh.TransportError("reset")
    assert policy.delay(0, read, broken) is not None
    assert policy.delay(0, guarded, broken) is not None
    assert policy.delay(0, write, broken) is None  # it may have been applied
    assert policy.delay(0, write, sh.client._NotSent("refused")) is not None  # never sent
    assert policy.delay(0, write, sh.RateLimited("x", details={"retry_after": 1})) >= 1
    assert policy.delay(0, read, sh.Unavailable("db")) is not None
    assert policy.delay(0, write, sh.Unavailable("db")) is None
    assert policy.delay(2, read, broken) is None  # out of attempts
    assert policy.delay(0, read, sh.NotFound("x")) is None


def test_an_unreachable_server_is_a_transport_error_after_retries(store):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = RetryPolicy(retries=1, backoff=0.01)
    with Client(f"http://127.0.0.1:{port}", store.staff_token, retry=policy) as client:
        with pytest.raises(sh.TransportError):
            client.get("cl:x")  # nothing listens: refused twice, then reported


def test_snapshots_create_list_get_download_restore_delete(staff, tmp_path):
    staff.put("cl:snap", "before")
    snapshot = staff.create_snapshot("client-test")
    assert isinstance(snapshot, sh.Snapshot) and snapshot.label == "client-test"
    assert snapshot.id in [s.id for s in staff.list_snapshots()]
    assert staff.get_snapshot(snapshot.id) == snapshot

    target = tmp_path / "snap.jsonl.gz"
    size = staff.download_snapshot(snapshot.id, target)
    assert size == target.stat().st_size == snapshot.compressed_size
    assert "sha256:" + hashlib.sha256(target.read_bytes()).hexdigest() == snapshot.checksum
    buffer = io.BytesIO()
    staff.download_snapshot(snapshot.id, buffer)
    assert buffer.getvalue() == target.read_bytes()

    staff.put("cl:snap", "after")
    dry = staff.restore_snapshot(snapshot.id, dry_run=True)
    assert dry.dry_run and dry.revision is None and staff.get("cl:snap").value == "after"
    restored = staff.restore_snapshot(snapshot.id)
    assert restored.snapshot_id == snapshot.id and restored.revision > snapshot.revision
    assert staff.get("cl:snap").value == "before"

    staff.delete_snapshot(snapshot.id)
    with pytest.raises(sh.NotFound):
        staff.get_snapshot(snapshot.id)


def test_async_client_has_every_method(server, store, tmp_path):
    async def scenario() -> None:
        async with AsyncClient(server.url, store.staff_token) as client:
            entry = await client.put("cl:async", {"n": 1}, metadata={"m": "1"})
            assert (await client.get("cl:async", include_metadata=True)).metadata == {"m": "1"}
            assert (await client.cas("cl:async", expected={"n": 1}, new_value=2)).swapped
            with pytest.raises(sh.CasFailed) as failed:
                await client.cas("cl:async", expected_version=1, new_value=3)
            assert failed.value.current == 2
            with pytest.raises(sh.VersionConflict):
                await client.put("cl:async", 3, expected_version=1)
            assert (await client.incr("cl:async-n", 5)).value == 5
            assert (await client.mget(["cl:async"]))["cl:async"].value == 2
            await client.bulk([{"op": "set", "key": f"cl:async:{i}", "value": i} for i in range(7)])
            assert [k async for k in client.keys("cl:async:", page_size=3)] == [
                f"cl:async:{i}" for i in range(7)
            ]
            values = [e.value async for e in client.entries("cl:async:", page_size=2)]
            assert values == list(range(7))
            assert await client.set_metadata("cl:async", {"x": "y"}) == {"x": "y"}
            assert await client.metadata("cl:async") == {"x": "y"}
            ops = [e.op async for e in client.history("cl:async", page_size=2)]
            assert ops[0] == "metadata" and len(ops) == 3
            assert (await client.stats()).version > entry.revision
            snapshot = await client.create_snapshot("async")
            assert (await client.get_snapshot(snapshot.id)).id == snapshot.id
            assert snapshot.id in [s.id for s in await client.list_snapshots()]
            size = await client.download_snapshot(snapshot.id, tmp_path / "a.gz")
            assert size == snapshot.compressed_size
            assert (await client.restore_snapshot(snapshot.id, dry_run=True)).dry_run
            await client.delete_snapshot(snapshot.id)
            await client.delete("cl:async")
            with pytest.raises(sh.NotFound):
                await client.get("cl:async")

    asyncio.run(scenario())
