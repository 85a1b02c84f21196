"""SIGKILL in the middle of work: a server during atomic bulks, a restore during its transaction.

Each kill lands while PostgreSQL shows the victim's transaction open (pg_stat_activity), so
it really is in the middle. Afterwards no bulk is half-applied, no revision is missing, and a
restore has left either entirely the old store or entirely the new one.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from state import snapshots

from .conftest import ROOT, Faults, assert_gapless, wait_for

pytestmark = pytest.mark.faults

BULK_SIZE = 500


def open_transactions(faults: Faults, application_name: str | None = None) -> int:
    """How many backends of the test database have a transaction open right now."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND xact_start IS NOT NULL "
        "AND pid <> pg_backend_pid()"
    )
    params: list = [faults.database]
    if application_name is not None:
        query += " AND application_name = %s"
        params.append(application_name)
    return faults.postgres.execute(query, params=params)[0][0]


def backends(faults: Faults) -> int:
    return faults.postgres.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        params=[faults.database],
    )[0][0]


def test_sigkill_during_atomic_bulks_leaves_no_half_bulk_and_no_gap(faults: Faults,
                                                                   record_property):  # fmt: skip
    victim = faults.server()
    attempted: list[str] = []
    acked: list[str] = []
    refused: list[tuple[int, dict]] = []
    stop = threading.Event()

    def send_bulks(thread: int) -> None:
        n = 0
        while not stop.is_set():
            bulk = f"t{thread}n{n}"
            n += 1
            operations = [
                {"op": "set", "key": f"bulk:{bulk}:{i}", "value": {"bulk": bulk, "i": i}}
                for i in range(BULK_SIZE)
            ]
            attempted.append(bulk)
            try:
                status, body = victim.request("POST", "/api/v1/state/bulk", faults.token,
                                              {"operations": operations}, timeout=60)  # fmt: skip
            except OSError:
                return  # the server is gone
            if status == 200:
                acked.append(bulk)
            else:
                refused.append((status, body))

    threads = [threading.Thread(target=send_bulks, args=(t,), daemon=True) for t in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(acked) >= 3, timeout=120, message="some bulks to be acknowledged")
        wait_for(lambda: open_transactions(faults) > 0, timeout=30, interval=0.005,
                 message="a bulk transaction to be open")  # fmt: skip
        os.kill(victim.pid, signal.SIGKILL)
        victim.popen.wait(timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not refused, refused[:3]
    # The dead server's backends notice and roll back; wait until they are gone.
    wait_for(lambda: backends(faults) == 0, timeout=30, message="the dead server's backends")

    counts = dict(
        faults.sql(
            "SELECT split_part(key, ':', 2), count(*) FROM state_stateentry "
            "WHERE key LIKE 'bulk:%%' GROUP BY 1"
        )
    )
    # No half-applied bulk: each one is entirely there or entirely absent.
    assert set(counts.values()) <= {BULK_SIZE}, {b: c for b, c in counts.items() if c != BULK_SIZE}
    assert set(acked) <= set(counts)  # every acknowledged bulk is there
    in_flight = [bulk for bulk in attempted if bulk not in acked]
    assert in_flight, "the kill did not land during a bulk"
    events = dict(
        faults.sql(
            "SELECT split_part(key, ':', 2), count(*) FROM state_stateevent "
            "WHERE key LIKE 'bulk:%%' GROUP BY 1"
        )
    )
    assert events == counts
    revision = assert_gapless(faults)

    # A new server process carries on from the same revision.
    survivor = faults.server()
    status, body = survivor.request("PUT", "/api/v1/state/after:kill", faults.token, {"value": 1})
    assert status == 201 and body["data"]["revision"] == revision + 1
    assert_gapless(faults)

    result = {
        "bulks_acknowledged_and_verified": len(acked),
        "bulks_in_flight_at_kill": len(in_flight),
        "in_flight_committed_whole": sum(1 for bulk in in_flight if bulk in counts),
        "in_flight_rolled_back_whole": sum(1 for bulk in in_flight if bulk not in counts),
        "keys_verified": sum(counts.values()),
        "store_revision": revision,
    }
    record_property("counts", result)
    print(f"\nbulk kill: {result}")


SEED_OLD = """
from state import services
services.state_bulk(operations=[
    {{"op": "set", "key": f"k:{{i:06}}", "value": {{"state": "old", "i": i}}}}
    for i in range(0, {count}, 25)])
services.state_bulk(operations=[
    {{"op": "set", "key": f"old:{{i}}", "value": i}} for i in range(500)])
"""


def fingerprint(faults: Faults) -> tuple[int, str]:
    rows = faults.sql(
        "SELECT key, value::text, metadata::text, version, expires_at FROM state_stateentry "
        "ORDER BY key"
    )
    return len(rows), hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()


def write_snapshot_file(path, count: int) -> None:
    """The new state: `count` keys in a snapshot file, built directly in the file format."""
    now = datetime.now(UTC)
    with open(path, "wb") as target:
        writer = snapshots.Writer(target, revision=1, created_at=now, key_count=count)
        for i in range(count):
            value = {"state": "new", "i": i, "pad": "x" * 200}
            writer.write(snapshots.Entry(key=f"k:{i:06}", value=value, metadata={}, version=3,
                                         revision=1, created_at=now, updated_at=now,
                                         expires_at=None, source="seed"))  # fmt: skip
        writer.close()


def test_sigkill_during_restore_leaves_the_old_or_the_new_store(faults: Faults, record_property):
    count = 20_000
    path = faults.tmp / "new.jsonl.gz"
    write_snapshot_file(path, count)
    faults.manage("shell", "-c", SEED_OLD.format(count=count))
    old_state = fingerprint(faults)
    old_revision = assert_gapless(faults)

    env = {**faults.env(), "PGAPPNAME": "statehub-restore"}
    restore = subprocess.Popen(
        [sys.executable, "manage.py", "restore", "--file", str(path), "--yes"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: open_transactions(faults, "statehub-restore") > 0, timeout=120,
                 interval=0.01, message="the restore's transaction to open")  # fmt: skip
        time.sleep(0.3)  # well into it: rows deleted, batches copied
        os.kill(restore.pid, signal.SIGKILL)
        restore.wait(timeout=10)
    finally:
        if restore.poll() is None:
            restore.kill()
            restore.wait()
    wait_for(lambda: backends(faults) == 0, timeout=30, message="the restore's backend to go")

    after_kill = fingerprint(faults)
    # Entirely the old store: the kill landed inside the restore's one transaction (had it
    # committed first, the transaction would not have been seen open).
    assert after_kill[0] != count, "the restore committed before the kill: make it bigger"
    assert after_kill == old_state, "a half-restored store"
    assert assert_gapless(faults) == old_revision  # and no revision was used

    faults.manage("restore", "--file", str(path), "--yes")
    new_state = faults.sql(
        "SELECT count(*), count(*) FILTER (WHERE value->>'state' = 'new' AND version = 3) "
        "FROM state_stateentry"
    )[0]
    assert new_state == (count, count)  # entirely the new store
    assert assert_gapless(faults) == old_revision + 1
    assert faults.sql("SELECT op FROM state_stateevent ORDER BY revision DESC LIMIT 1") == [
        ("restore",)
    ]

    result = {
        "keys_old_state": old_state[0],
        "keys_new_state": new_state[0],
        "state_after_kill": "old (entirely)",
        "state_after_rerun": "new (entirely)",
    }
    record_property("counts", result)
    print(f"\nrestore kill: {result}")
