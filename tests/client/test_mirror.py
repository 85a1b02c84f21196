"""`Mirror`: a local copy that follows the store, and lists again after a restore."""

import asyncio
from datetime import UTC, datetime

import pytest

from statehub_client import AsyncClient, Change, Entry, Progress
from statehub_client.mirror import _State

from .conftest import PROGRESS_INTERVAL


def _entry(key: str, value, revision: int) -> Entry:
    now = datetime.now(UTC)
    return Entry(key, value, 1, revision, now, now, None, "api")


def _change(key: str, op: str, new_value, revision: int) -> Change:
    return Change(key, op, None, new_value, 1, revision, 0.0, "api")


def test_changes_a_listing_already_showed_are_not_applied_again():
    # Page 1 was read at revision 10; key b on a later page already shows its change at 12.
    state = _State(None, ["p:"], progress_interval=1)
    state._load([_entry("p:a", 1, 5), _entry("p:b", "new", 12)], revision=10)
    assert state._apply(_change("p:b", "set", "old", 11)) is None  # older than the listing
    assert state._apply(_change("p:b", "set", "new", 12)) is None
    assert state._apply(_change("p:a", "delete", None, 13)) is not None
    assert state._apply(_change("p:c", "set", 3, 14)) is not None
    assert state._apply(_change("p:c", "metadata", {"m": "1"}, 15)) is not None
    state._apply(Progress(20))
    assert (state.snapshot(), state.revision) == ({"p:b": "new", "p:c": 3}, 20)


@pytest.mark.e2e
def test_mirror_follows_changes_and_equals_a_fresh_listing_after_a_restore(staff):
    staff.bulk([{"op": "set", "key": f"mir:{i:02d}", "value": i} for i in range(30)])
    original = {f"mir:{i:02d}": i for i in range(30)}
    with staff.mirror(["mir:"], progress_interval=PROGRESS_INTERVAL) as mirror:
        assert mirror.snapshot() == original
        snapshot = staff.create_snapshot("mirror")
        staff.put("mir:00", "changed")
        staff.delete("mir:01")
        staff.set_metadata("mir:02", {"owner": "x"})
        assert mirror.wait_for(staff.put("mir:new", True).revision)
        assert mirror["mir:00"] == "changed" and "mir:01" not in mirror
        assert mirror["mir:02"] == 2 and mirror["mir:new"] is True

        restored = staff.restore_snapshot(snapshot.id)
        assert mirror.wait_for(restored.revision)
        fresh = {entry.key: entry.value for entry in staff.entries("mir:")}
        assert mirror.snapshot() == fresh == original
        assert mirror.resyncs == 1
        assert mirror.wait_for(staff.put("mir:after", 1).revision)  # still following
        assert mirror["mir:after"] == 1


@pytest.mark.e2e
def test_async_mirror_lists_again_after_a_restore(server, store):
    async def scenario() -> None:
        async with AsyncClient(server.url, store.staff_token) as client:
            await client.put("amir:a", 1)
            mirror = await client.mirror(["amir:"], progress_interval=PROGRESS_INTERVAL).start()
            try:
                snapshot = await client.create_snapshot("async-mirror")
                assert await mirror.wait_for((await client.put("amir:b", 2)).revision)
                assert mirror.snapshot() == {"amir:a": 1, "amir:b": 2}
                restored = await client.restore_snapshot(snapshot.id)
                assert await mirror.wait_for(restored.revision)
                fresh = {e.key: e.value async for e in client.entries("amir:")}
                assert mirror.snapshot() == fresh == {"amir:a": 1}
            finally:
                await mirror.stop()

    asyncio.run(scenario())
