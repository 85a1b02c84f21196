"""/readyz against real dependencies that are down: a closed Redis port, an unreachable database."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from .conftest import ROOT, Server, _free_port, _is_postgres, _wait_ready

pytestmark = pytest.mark.e2e


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    return _free_port(set())


@contextmanager
def server(env: dict[str, str], tmp_path) -> Iterator[int]:
    port = _free_port({closed_port()})
    log = tmp_path / f"daphne-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "config.asgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    try:
        _wait_ready(process, port, log)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def readyz(port: int) -> tuple[int, dict, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, json.loads(body), time.monotonic() - started


def test_readyz_is_ok_when_everything_answers(e2e_env, tmp_path):
    with server(e2e_env, tmp_path) as port:
        status, body, _ = readyz(port)
    assert status == 200, body
    assert body == {"status": "ok", "checks": {"database": "ok", "channel_layer": "ok"},
                    "down": []}  # fmt: skip


def test_readyz_names_the_channel_layer_when_redis_is_unreachable(e2e_env, tmp_path):
    env = {**e2e_env, "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
           "STATE_READYZ_TIMEOUT_SECS": "2"}  # fmt: skip
    with server(env, tmp_path) as port:
        status, body, took = readyz(port)
    assert status == 503, body
    assert body["down"] == ["channel_layer"] and body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["channel_layer"].startswith("error:")
    assert took < 2 * 2 + 2  # each check is bounded by its timeout


def test_readyz_names_the_database_when_it_is_unreachable(e2e_env, tmp_path):
    if _is_postgres():
        database = f"postgres://postgres@127.0.0.1:{closed_port()}/statehub"
    else:
        database = f"sqlite:///{tmp_path / 'no-such-directory' / 'db.sqlite3'}"
    env = {**e2e_env, "DATABASE_URL": database, "STATE_READYZ_TIMEOUT_SECS": "2",
           "DATABASE_POOL_TIMEOUT_SECS": "5"}  # fmt: skip
    with server(env, tmp_path) as port:
        status, body, took = readyz(port)
        assert readyz(port)[0] == 503  # and again: a hung check does not wedge the next one
    assert status == 503, body
    assert body["down"] == ["database"]
    assert body["checks"]["channel_layer"] == "ok"
    assert body["checks"]["database"].startswith("error:")
    assert took < 2 * 2 + 2


def test_with_redis_unreachable_the_api_keeps_answering_and_limits_count_in_the_process(
    e2e_env, tokens, tmp_path
):
    env = {**e2e_env, "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
           "STATE_RATE_LIMIT_READ": "3/h"}  # fmt: skip
    with server(env, tmp_path) as port:
        api = Server(port=port, pid=0)
        token = tokens["e2e-staff"]
        api.put("redis-down:k", 1, token)
        for _ in range(2):
            status, body = api.request("GET", "/api/v1/state/redis-down:k", token)
            assert status == 200, body
        status, stats = api.request("GET", "/api/v1/state/stats", token)  # the third read
        # Nothing reaches Redis, yet this process went on counting: the fourth is refused.
        status_over, over = api.request("GET", "/api/v1/state/redis-down:k", token)
    assert status == 200, stats
    assert stats["data"]["hot_keys"] == []
    assert status_over == 429 and over["error"]["code"] == "rate_limited", over
