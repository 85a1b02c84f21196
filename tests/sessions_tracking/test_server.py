"""Tracking in real daphne processes: the background writer, WebSocket heartbeats, SIGTERM.

Each server runs on a SQLite file of its own (copied from one migrated template), so a test
can read what was really written with sqlite3, hold the database's write lock to make the
store unavailable for writes, and stop the server however it likes.
"""

import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from sessions_tracking.services import parse_iso
from tests.e2e.conftest import ROOT, _free_port, _manage, _wait_ready

pytestmark = pytest.mark.e2e

SEED = """
import json
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from state import services
staff = User.objects.create_user("t-staff", is_staff=True)
alice = User.objects.create_user("alice")
services.state_set(key="global:seeded", value={"n": 1})
print(json.dumps({u.username: Token.objects.create(user=u).key for u in (staff, alice)}))
"""


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DEBUG="false", ALLOWED_HOSTS="127.0.0.1,localhost", LOG_LEVEL="WARNING",
               PYTHONUNBUFFERED="1", STATE_STREAM_POLL_INTERVAL_SECS="0.2")  # fmt: skip
    return env


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A migrated SQLite file with a staff user, alice and a key; and their tokens."""
    path = tmp_path_factory.mktemp("tracking-db") / "template.sqlite3"
    env = dict(_base_env(), DATABASE_URL=f"sqlite:///{path}", STATE_TRACK_REQUESTS="false")
    _manage(env, "migrate", "--noinput")
    tokens = json.loads(_manage(env, "shell", "-c", SEED).strip().splitlines()[-1])
    return path, tokens


@dataclass
class Served:
    port: int
    process: subprocess.Popen
    db: Path
    log: Path
    env: dict[str, str]

    def get(self, path: str, token: str, **headers: str) -> tuple[int, dict[str, str], Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path, headers={"Authorization": f"Bearer {token}",
                                                     **headers})  # fmt: skip
            response = connection.getresponse()
            headers = {name.lower(): value for name, value in response.headers.items()}
            return response.status, headers, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def stored(self, prefix: str) -> dict[str, Any]:
        """What the database holds under `prefix`, read straight from the file."""
        with sqlite3.connect(self.db) as db:
            rows = db.execute(
                "SELECT key, value FROM state_stateentry WHERE key >= ? AND key < ?",
                (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)),
            ).fetchall()
        return {key: json.loads(value) for key, value in rows}

    def wait_stored(self, key: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (value := self.stored(key).get(key)) is not None:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{key} was not written within {timeout}s")

    def ws(self, token: str, query: str = "", **headers: str) -> ClientConnection:
        return connect(f"ws://127.0.0.1:{self.port}/api/v1/state/events{query}",
                       additional_headers={"Authorization": f"Bearer {token}", **headers},
                       open_timeout=10)  # fmt: skip


@pytest.fixture
def serve(template, tmp_path) -> Iterator:
    """Start a daphne server on a copy of the template with extra environment."""
    started: list[Served] = []

    def start(server: str = "daphne", **extra: str) -> Served:
        db = tmp_path / f"db{len(started)}.sqlite3"
        shutil.copy(template[0], db)
        env = dict(_base_env(), DATABASE_URL=f"sqlite:///{db}", **extra)
        port = _free_port(set())
        log = tmp_path / f"{server}{len(started)}.log"
        command = {
            "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port)],
            "uvicorn": ["-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                        "--lifespan", "on", "--log-level", "warning"],
        }[server]  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, *command, "config.asgi:application"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
        )  # fmt: skip
        served = Served(port=port, process=process, db=db, log=log, env=env)
        started.append(served)
        _wait_ready(process, port, log)
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()


def receive(stream: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    while True:
        message = json.loads(stream.recv(timeout=timeout))
        if message["type"] != "progress":
            return message


def session_changes(stream: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Collect the state changes a stream gets within `seconds`, answering nothing."""
    found, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = receive(stream, timeout=left)
        except TimeoutError:
            break
        if message["type"] == "state_change":
            found.append(message["data"])
    return found


def test_sessions_and_heartbeats_through_a_real_websocket(serve, template):
    tokens = template[1]
    server = serve(STATE_TRACKING_FLUSH_INTERVAL_SECS="0.05",
                   STATE_SESSION_HEARTBEAT_WRITE_SECS="2")  # fmt: skip
    with server.ws(tokens["alice"]) as alice:
        assert receive(alice)["type"] == "subscribed"
        # The open connection marks alice's session active; she sees it on her own stream.
        opened = receive(alice)
        assert (opened["type"], opened["data"]["key"]) == ("state_change", "session:alice")
        assert opened["data"]["new_value"]["active"] is True
        first_beat = opened["data"]["new_value"]["last_heartbeat"]
        assert first_beat is not None

        # Pings for 5 s, every 50 ms: about 100 heartbeats, written at most once per 2 s.
        beats = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            alice.send(json.dumps({"type": "ping"}))
            while True:
                message = receive(alice)
                if message["type"] == "pong":
                    break
                assert message["data"]["key"] == "session:alice", message
                beats.append(message["data"]["new_value"]["last_heartbeat"])
            time.sleep(0.05)
        assert 1 <= len(beats) <= 4, beats
        moments = [parse_iso(beat) for beat in [first_beat, *beats]]
        assert moments == sorted(moments) and len(set(moments)) == len(moments)
        stored = server.stored("session:alice")["session:alice"]
        # (a periodic refresh may have landed since the last pong)
        assert parse_iso(stored["last_heartbeat"]) >= moments[-1] and stored["active"] is True

        # Request records are for staff only: alice cannot subscribe to them...
        alice.send(json.dumps({"type": "subscribe", "prefixes": ["request:"]}))
        error = receive(alice)
        assert (error["type"], error["data"]["code"]) == ("error", "permission_denied")
        with server.ws(tokens["t-staff"], "?prefixes=request:") as staff:
            assert receive(staff)["type"] == "subscribed"
            status, headers, _ = server.get("/api/v1/state/global:seeded", tokens["alice"],
                                            **{"X-Request-ID": "alice-req-1"})  # fmt: skip
            assert (status, headers["x-correlation-id"]) == (200, "alice-req-1")
            # ...staff see them, and alice sees her session move on (and nothing else).
            seen = [receive(staff)["data"] for _ in range(2)]
            assert {c["key"] for c in seen} == {"request:alice-req-1",
                                                "request:alice-req-1:completion"}  # fmt: skip
            while (change := receive(alice)["data"])["new_value"]["correlation_id"] is None:
                assert change["key"] == "session:alice"  # a heartbeat may come first
            assert change["key"] == "session:alice"
            assert change["new_value"]["correlation_id"] == "alice-req-1"

    # Closed, and idle for STATE_SESSION_IDLE_SECS: the worker's job turns it inactive.
    time.sleep(1.5)
    worker_env = dict(server.env, STATE_SESSION_IDLE_SECS="1", STATE_PERSISTENCE_ENABLED="false")
    _manage(worker_env, "state_worker", "--once")
    assert server.stored("session:alice")["session:alice"]["active"] is False


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_sigterm_flushes_the_buffer_and_sigkill_loses_it(serve, template, server):
    if server == "uvicorn":
        pytest.importorskip("uvicorn", reason="uvicorn comes with the server extra")
    staff = template[1]["t-staff"]
    # A long flush interval keeps everything in the buffer until the server stops.
    terminated = serve(server, STATE_TRACKING_FLUSH_INTERVAL_SECS="60")
    killed = serve(server, STATE_TRACKING_FLUSH_INTERVAL_SECS="60")
    for served, name in [(terminated, "term"), (killed, "kill")]:
        for n in range(10):
            status, _, _ = served.get("/api/v1/state/global:seeded", staff,
                                      **{"X-Correlation-ID": f"{name}-{n}"})  # fmt: skip
            assert status == 200
        assert served.stored(f"request:{name}-") == {}

    terminated.process.send_signal(signal.SIGTERM)
    # daphne exits normally (atexit flushes); uvicorn flushes on lifespan.shutdown and then
    # re-raises SIGTERM.
    assert terminated.process.wait(timeout=30) == (0 if server == "daphne" else -signal.SIGTERM)
    # (Only our ids: on a shared machine a stray client may hit the port too.)
    stored = terminated.stored("request:term-")
    assert set(stored) == {f"request:term-{n}{end}" for n in range(10)
                           for end in ("", ":completion")}  # fmt: skip
    assert {v["status"] for k, v in stored.items() if k.endswith(":completion")} == {200}
    assert terminated.stored("session:")["session:t-staff"]["correlation_id"] == "term-9"

    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait(timeout=30)
    assert killed.stored("request:kill-") == {} and "session:t-staff" not in killed.stored(
        "session:"
    )


def test_store_unavailable_for_writes_while_requests_are_still_served(serve, template):
    staff = template[1]["t-staff"]
    server = serve(STATE_TRACKING_FLUSH_INTERVAL_SECS="0.05", SQLITE_BUSY_TIMEOUT_SECS="2")
    server.get("/api/v1/state/global:seeded", staff, **{"X-Request-ID": "before"})
    server.wait_stored("request:before:completion")

    # Another connection holds the write lock: every tracking write fails (after 2 s), while
    # reads (WAL) go on. The requests must be served, and not wait for the tracking writes.
    blocker = sqlite3.connect(server.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        timings = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            began = time.monotonic()
            status, _, body = server.get("/api/v1/state/global:seeded", staff)
            timings.append(time.monotonic() - began)
            assert (status, body["data"]["value"]) == (200, {"n": 1})
        assert len(timings) >= 5 and max(timings) < 1.5, timings
        log = server.log.read_text()
        assert "tracking:" in log and "not written (OperationalError" in log, log
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    # The store is back: tracking writes again, without a restart.
    server.get("/api/v1/state/global:seeded", staff, **{"X-Request-ID": "after"})
    assert server.wait_stored("request:after:completion")["status"] == 200


def test_a_websocket_keeps_its_incoming_correlation_id_on_uvicorn(serve, template):
    pytest.importorskip("uvicorn", reason="uvicorn comes with the server extra")
    server = serve("uvicorn", STATE_PROPAGATE_STATE="false")
    with server.ws(template[1]["alice"], **{"X-Correlation-ID": "ws-conn-1"}) as alice:
        # daphne drops headers of the ASGI accept message; uvicorn sends them.
        assert alice.response.headers["X-Correlation-ID"] == "ws-conn-1"
        assert receive(alice)["type"] == "subscribed"
