"""hot_keys in /stats: API reads and writes, windows, sampling and capacity (Redis on PG runs)."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from state import hotkeys, services

URL = "/api/v1/state"
T0 = datetime(2030, 1, 1, tzinfo=UTC)  # the start of a window for every window length used


def hot(client) -> list[dict]:
    response = client.get(f"{URL}/stats")
    assert response.status_code == 200, response.content
    return response.json()["data"]["hot_keys"]


def test_hot_keys_count_api_reads_and_writes(staff_client):
    services.state_set(key="a", value=1)
    for _ in range(3):
        staff_client.get(f"{URL}/a")
    staff_client.put(f"{URL}/b", {"value": 1}, format="json")
    staff_client.post(f"{URL}/mget", {"keys": ["a", "c"]}, format="json")
    staff_client.post(f"{URL}/bulk", {"operations": [{"op": "set", "key": "b", "value": 2}]},
                      format="json")  # fmt: skip
    staff_client.post(f"{URL}/incr", {"key": "c"}, format="json")
    staff_client.get(f"{URL}/c/metadata")
    assert hot(staff_client) == [
        {"key": "a", "accesses": 4},
        {"key": "c", "accesses": 3},
        {"key": "b", "accesses": 2},
    ]


def test_refused_requests_are_not_counted_and_readers_see_only_their_keys(
    staff_client, user_client
):
    for _ in range(3):
        staff_client.put(f"{URL}/secret:x", {"value": 1}, format="json")
    assert user_client.get(f"{URL}/secret:x").status_code == 403
    user_client.get(f"{URL}/global:motd")
    assert hot(staff_client) == [{"key": "secret:x", "accesses": 3},
                                 {"key": "global:motd", "accesses": 1}]  # fmt: skip
    assert hot(user_client) == [{"key": "global:motd", "accesses": 1}]


def test_at_most_state_hot_keys_are_shown(staff_client, settings):
    settings.STATE_HOT_KEYS = 2
    for n, key in enumerate("abc"):
        hotkeys.record(*[key] * (n + 1))
    assert [row["key"] for row in hot(staff_client)] == ["c", "b"]


def test_the_previous_window_fades_out_linearly(db, settings, time_machine):
    settings.STATE_HOT_KEYS_WINDOW_SECS = 60
    time_machine.move_to(T0 + timedelta(seconds=10), tick=False)
    for _ in range(10):
        hotkeys.record("old")
    hotkeys.record("both")
    time_machine.move_to(T0 + timedelta(seconds=90), tick=False)  # half-way through the next
    hotkeys.record("new", "new", "both")
    assert hotkeys.top(10) == [hotkeys.HotKey("old", 5), hotkeys.HotKey("new", 2),
                               hotkeys.HotKey("both", 2)]  # fmt: skip  # 1 + 0.5 rounds to 2
    time_machine.move_to(T0 + timedelta(seconds=150), tick=False)  # two windows on
    assert hotkeys.top(10) == [hotkeys.HotKey("new", 1)]  # "both": 0.5 rounds to nothing
    time_machine.move_to(T0 + timedelta(seconds=190), tick=False)
    assert hotkeys.top(10) == []


def test_sampled_counts_estimate_the_true_count(db, settings):
    settings.STATE_HOT_KEYS_SAMPLE = 10
    random.seed(11)
    for _ in range(20_000):
        hotkeys.record("busy")
    for _ in range(2_000):
        hotkeys.record("quiet")
    (busy, quiet) = hotkeys.top(2)
    # Standard deviation about sqrt(c * N): 447 for busy, 141 for quiet; allow four.
    assert busy.key == "busy" and abs(busy.accesses - 20_000) < 4 * 447
    assert quiet.key == "quiet" and abs(quiet.accesses - 2_000) < 4 * 141


def test_a_window_keeps_at_most_the_capacity_and_the_hottest_survive(db, settings):
    settings.STATE_HOT_KEYS_CAPACITY = 5
    for n in range(50):
        hotkeys.record("hot", "hot", f"cold{n}")
        if settings.REDIS_URL and n % 10 == 9:
            hotkeys.flush()  # several flushes, as the background thread would
    top = hotkeys.top(100)
    assert top[0] == hotkeys.HotKey("hot", 100)
    assert len(top) <= 2 * 5 + 1


def test_reset_forgets_everything(db):
    hotkeys.record("x")
    assert hotkeys.top(1)
    hotkeys.reset()
    assert hotkeys.top(1) == []


def test_a_flush_adds_counts_to_a_redis_window_that_expires_and_keeps_the_capacity(
    db, settings, time_machine
):
    # One script call a window does what a ZINCRBY a key did: add the counts, set the set's
    # expiry (without it every window stayed in Redis forever), trim it to the capacity.
    if not settings.REDIS_URL:
        pytest.skip("The windows are in Redis on the PostgreSQL + Redis run only.")
    import redis

    settings.STATE_HOT_KEYS_CAPACITY = 3
    settings.STATE_HOT_KEYS_WINDOW_SECS = 60
    time_machine.move_to(T0 + timedelta(seconds=10), tick=False)  # one window throughout
    hotkeys.record("a", "a", "a", "b", "b", "c", "d")
    hotkeys.flush()
    hotkeys.record("d", "d", "d", "d")
    hotkeys.flush()
    client = redis.Redis.from_url(settings.REDIS_URL)
    [name] = client.keys(f"{hotkeys.REDIS_PREFIX}*")
    assert client.zrange(name, 0, -1, desc=True, withscores=True) == [
        (b"d", 5.0), (b"a", 3.0), (b"b", 2.0),
    ]  # fmt: skip
    assert 0 < client.ttl(name) <= 2 * 60 + 60
