"""PostgreSQL crash-restarted and stopped under a steady write load.

While it is down every request fails cleanly (503 `unavailable`, in the envelope, within the
pool timeout); nothing acknowledged is lost; the revision sequence stays gapless; the server
and the worker recover by themselves, without a restart.
"""

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from .conftest import Faults, assert_gapless, wait_for

pytestmark = pytest.mark.faults


@dataclass
class WriteLoad:
    """Writer threads, each PUTting fresh keys in a loop; every outcome is recorded."""

    server: object
    token: str
    threads: int = 4
    acked: list[tuple[str, int, int]] = field(default_factory=list)  # key, revision, value
    failed: list[tuple[float, str, int | None, str]] = field(default_factory=list)
    outcomes: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, what
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._workers = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            key, value = f"load:{n}:{i}", n * 1_000_000 + i
            i += 1
            started = time.monotonic()
            try:
                status, body = self.server.request(
                    "PUT", f"/api/v1/state/{key}", self.token, {"value": value}
                )
            except OSError as exc:
                self._record(started, "connection", None, repr(exc))
                continue
            if status in (200, 201):
                with self._lock:
                    self.acked.append((key, body["data"]["revision"], value))
                    self.outcomes.append((started, time.monotonic(), "ok"))
            else:
                code = (body.get("error") or {}).get("code", "")
                self._record(started, f"{status} {code}", status, code)
                time.sleep(0.05)

    def _record(self, at: float, outcome: str, status: int | None, detail: str) -> None:
        with self._lock:
            self.failed.append((at, outcome, status, detail))
            self.outcomes.append((at, time.monotonic(), outcome))

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)


def test_postgres_restart_and_outage_under_write_load(faults: Faults, record_property):
    server = faults.server()
    worker = faults.worker()
    load = WriteLoad(server=server, token=faults.token)
    load.start()
    try:
        wait_for(lambda: load.acked_count() >= 40, timeout=60, message="writes before the fault")

        # 1. A crash-restart (immediate stop: connections cut, no clean shutdown).
        before = load.acked_count()
        faults.postgres.stop("immediate")
        faults.postgres.start()
        wait_for(
            lambda: load.acked_count() >= before + 40,
            timeout=60,
            message="writes to succeed again after the restart, with no server restart",
        )

        # 2. An outage of a few seconds.
        faults.postgres.stop("fast")
        down_at = time.monotonic()
        time.sleep(5)
        up_at = time.monotonic()
        faults.postgres.start()
        resumed = load.acked_count()
        wait_for(
            lambda: load.acked_count() >= resumed + 40,
            timeout=60,
            message="writes to succeed again after the outage, with no server restart",
        )
    finally:
        load.stop()

    # Every failure was a clean 503 `unavailable`: no 500, no hang, no dropped connection.
    kinds = Counter(outcome for _, outcome, _, _ in load.failed)
    assert set(kinds) <= {"503 unavailable"}, kinds
    during_outage = [o for start, end, o in load.outcomes if down_at < start and end < up_at]
    assert during_outage and set(during_outage) == {"503 unavailable"}, Counter(during_outage)
    assert server.alive and worker.alive

    # Nothing acknowledged is lost: each acked write is there, at its revision, in the log.
    entries = dict(
        (key, (revision, value))
        for key, revision, value in faults.sql(
            "SELECT key, revision, (value #>> '{}')::bigint FROM state_stateentry "
            "WHERE key LIKE 'load:%%'"
        )
    )
    log = {
        revision: (key, value)
        for revision, key, value in faults.sql(
            "SELECT revision, key, (new_value #>> '{}')::bigint FROM state_stateevent "
            "WHERE key LIKE 'load:%%'"
        )
    }
    for key, revision, value in load.acked:
        assert entries.get(key) == (revision, value), key
        assert log.get(revision) == (key, value), revision
    store_revision = assert_gapless(faults)
    unacked_present = len(entries) - len(load.acked)  # committed, but the answer was a 503

    # The worker recovered too: it expires a key written after the faults.
    status, _ = server.request("PUT", "/api/v1/state/ttl:after", faults.token,
                               {"value": 1, "ttl": 1})  # fmt: skip
    assert status == 201
    expired = "SELECT 1 FROM state_stateevent WHERE key = 'ttl:after' AND op = 'expire'"
    wait_for(lambda: faults.sql(expired), timeout=30, message="the worker to expire a key")
    assert worker.alive
    assert_gapless(faults)

    counts = {
        "writes_acknowledged_and_verified": len(load.acked),
        "requests_failed_503": kinds.get("503 unavailable", 0),
        "writes_committed_but_answered_503": unacked_present,
        "store_revision": store_revision,
    }
    record_property("counts", counts)
    print(f"\npostgres faults: {counts}")
