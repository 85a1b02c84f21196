"""Rate limits and hot keys across two real server processes: shared through Redis when
REDIS_URL is set (the PostgreSQL run), per process on the embedded default."""

import time
from collections.abc import Iterator

import pytest
from django.core.cache import cache

from .conftest import Server, daphne_servers

pytestmark = pytest.mark.e2e


@pytest.fixture
def pair(e2e_env, tokens, shared_redis, tmp_path) -> Iterator[list[Server]]:
    if shared_redis:
        cache.clear()  # this run's Redis database: no counts left from an earlier run
    # Not across an hour boundary: the read window below is an hour.
    while time.time() % 3600 > 3600 - 20:
        time.sleep(1)
    env = {**e2e_env, "STATE_RATE_LIMIT_READ": "4/h", "STATE_RATE_LIMIT_SYNC_SECS": "0.05",
           "STATE_HOT_KEYS_FLUSH_SECS": "0.2"}  # fmt: skip
    try:
        with daphne_servers(env, 2, tmp_path) as started:
            yield [server for _, server in started]
    finally:
        if shared_redis:
            cache.clear()


def test_the_read_limit_counts_a_users_requests_on_every_process(pair, tokens, shared_redis):
    a, b = pair
    token = tokens["e2e-staff"]
    for server in (a, a, b, b):
        assert server.request("GET", "/api/v1/state/limits:absent", token)[0] == 404
        time.sleep(0.3)  # a few sync intervals: each process has told Redis, and heard back
    status, body = b.request("GET", "/api/v1/state/limits:absent", token)
    if shared_redis:
        # The fifth read of the hour, wherever it lands.
        assert status == 429 and body["error"]["code"] == "rate_limited"
    else:
        assert status == 404  # local memory: B has seen three of them


def test_hot_keys_merge_the_accesses_seen_by_every_process(pair, tokens, shared_redis):
    a, b = pair
    token = tokens["e2e-staff"]
    for _ in range(3):
        a.put("hot:e2e:1", 1, token)
    b.put("hot:e2e:2", 1, token)
    time.sleep(1)  # a flush interval (0.2 s) or more

    def hot(server: Server) -> list[dict]:
        status, body = server.request("GET", "/api/v1/state/stats", token)
        assert status == 200, body
        return [row for row in body["data"]["hot_keys"] if row["key"].startswith("hot:e2e:")]

    if shared_redis:
        expected = [{"key": "hot:e2e:1", "accesses": 3},
                    {"key": "hot:e2e:2", "accesses": 1}]  # fmt: skip
        assert hot(a) == expected and hot(b) == expected
    else:
        assert hot(a) == [{"key": "hot:e2e:1", "accesses": 3}]
        assert hot(b) == [{"key": "hot:e2e:2", "accesses": 1}]


def test_the_rate_limiter_reuses_its_redis_connections(pair, tokens, shared_redis):
    # Django keeps a cache backend per request context under ASGI: counted through
    # caches["default"], every request opened (and dropped) a Redis connection of its own.
    if not shared_redis:
        pytest.skip("The rate limits count in Redis on the PostgreSQL + Redis run only.")
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    a, _ = pair
    token = tokens["e2e-staff"]
    a.request("GET", "/api/v1/state/limits:absent", token)  # the pools are made
    before = client.info("stats")["total_connections_received"]
    for _ in range(40):
        assert a.request("GET", "/api/v1/state/limits:absent", token)[0] in (404, 429)
    opened = client.info("stats")["total_connections_received"] - before
    assert opened < 10, f"{opened} Redis connections opened for 40 requests"
