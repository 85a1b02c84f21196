"""Redis stopped and started while subscribers are connected to another server process.

Writes go through server A; subscribers are connected to server B, which hears of them only
through the channel layer (Redis) or by following the event log every poll interval. With
Redis down the REST API keeps working and subscribers still get each change within about a
poll interval; when it is back they carry on; at the end each has every change, in order,
once.
"""

import json
import threading
import time
from dataclasses import dataclass, field

import pytest
from websockets.sync.client import connect

from .conftest import Faults, assert_gapless, wait_for

pytestmark = pytest.mark.faults

POLL_SECS = 0.5  # STATE_STREAM_POLL_INTERVAL_SECS of the fault servers
SUBSCRIBERS = 3


@dataclass
class Subscriber:
    """A WebSocket client on its own thread, recording each change and when it arrived."""

    url: str
    token: str
    changes: list[tuple[int, str, float]] = field(default_factory=list)  # revision, key, at
    other: list[dict] = field(default_factory=list)
    closed: str | None = None

    def start(self) -> None:
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "the subscriber did not get its `subscribed` message"

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            with connect(self.url + "?prefixes=feed:", additional_headers=headers,
                         open_timeout=10) as stream:  # fmt: skip
                first = json.loads(stream.recv(timeout=10))
                assert first["type"] == "subscribed", first
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        message = json.loads(stream.recv(timeout=0.2))
                    except TimeoutError:
                        continue
                    if message["type"] == "state_change":
                        data = message["data"]
                        self.changes.append((data["revision"], data["key"], time.monotonic()))
                    elif message["type"] != "progress":
                        self.other.append(message)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on
            self.closed = repr(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def revisions(self) -> list[int]:
        return [revision for revision, _, _ in self.changes]


def test_redis_outage_keeps_rest_working_and_subscribers_miss_nothing(faults: Faults,
                                                                     record_property):  # fmt: skip
    writer_server = faults.server()
    stream_server = faults.server()
    subscribers = [
        Subscriber(url=f"ws://127.0.0.1:{stream_server.port}/api/v1/state/events",
                   token=faults.token)
        for _ in range(SUBSCRIBERS)
    ]  # fmt: skip
    for subscriber in subscribers:
        subscriber.start()

    acked: list[tuple[int, float, str]] = []  # revision, acknowledged at, phase
    failures: list[tuple[int, dict]] = []
    phase = {"name": "before"}
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            status, body = writer_server.request(
                "PUT", f"/api/v1/state/feed:{n % 50}", faults.token, {"value": n}
            )
            if status in (200, 201):
                acked.append((body["data"]["revision"], time.monotonic(), phase["name"]))
            else:
                failures.append((status, body))
            n += 1
            time.sleep(0.04)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        time.sleep(2)
        faults.redis.stop()
        phase["name"] = "down"
        time.sleep(5)
        phase["name"] = "after"
        faults.redis.start()
        time.sleep(3)
    finally:
        stop.set()
        writer.join(timeout=30)

    assert not failures, failures[:5]  # REST kept working through the outage
    last = acked[-1][0]
    wait_for(
        lambda: all(s.revisions() and s.revisions()[-1] >= last for s in subscribers),
        timeout=20, message="every subscriber to catch up after Redis came back",
    )  # fmt: skip
    for subscriber in subscribers:
        subscriber.stop()

    feed = "SELECT revision FROM state_stateevent WHERE key LIKE 'feed:%%' ORDER BY revision"
    logged = [row[0] for row in faults.sql(feed)]
    assert logged == sorted(revision for revision, _, _ in acked)
    delays_down = []
    for subscriber in subscribers:
        assert subscriber.closed is None, subscriber.closed
        assert subscriber.other == []
        # Every change, in order, exactly once: the same sequence as the event log.
        assert subscriber.revisions() == logged
        arrived = {revision: at for revision, _, at in subscriber.changes}
        delays_down += [arrived[rev] - at for rev, at, name in acked if name == "down"]
    assert delays_down, "no writes were acknowledged while Redis was down"
    # While Redis is down, changes still arrive by following the log every poll interval.
    assert max(delays_down) < POLL_SECS + 2.0, max(delays_down)
    assert_gapless(faults)
    assert writer_server.alive and stream_server.alive

    counts = {
        "writes_acknowledged": len(acked),
        "writes_while_redis_down": sum(1 for *_, name in acked if name == "down"),
        "events_delivered": sum(len(s.changes) for s in subscribers),
        "subscribers": len(subscribers),
        "max_delay_while_down_secs": round(max(delays_down), 3),
    }
    record_property("counts", counts)
    print(f"\nredis faults: {counts}")
