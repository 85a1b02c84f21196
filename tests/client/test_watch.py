"""`watch()` against real servers that die, lag and go silent: every change once, in order."""

import asyncio
import socket
import subprocess
import sys
import threading
import time

import pytest

import statehub_client as sh
from statehub_client import AsyncClient, Client

from .conftest import PROGRESS_INTERVAL, ROOT

pytestmark = pytest.mark.e2e


class Collector(threading.Thread):
    """Iterate over a watch (blocking or asyncio) in a thread until `count` changes arrived."""

    def __init__(self, url: str, token: str, prefixes, since, count: int, mode: str) -> None:
        super().__init__(daemon=True)
        self.args = (url, token, prefixes, since)
        self.count, self.mode = count, mode
        self.changes: list[sh.Change] = []
        self.error: BaseException | None = None
        self.watch = None

    def run(self) -> None:
        try:
            if self.mode == "sync":
                self._sync()
            else:
                asyncio.run(self._async())
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def _sync(self) -> None:
        url, token, prefixes, since = self.args
        with Client(url, token) as client:
            self.watch = client.watch(prefixes, since, progress_interval=PROGRESS_INTERVAL)
            with self.watch:
                for change in self.watch:
                    self.changes.append(change)
                    if len(self.changes) >= self.count:
                        return

    async def _async(self) -> None:
        url, token, prefixes, since = self.args
        async with AsyncClient(url, token) as client:
            self.watch = client.watch(prefixes, since, progress_interval=PROGRESS_INTERVAL)
            async with self.watch:
                async for change in self.watch:
                    self.changes.append(change)
                    if len(self.changes) >= self.count:
                        return

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.changes) < count:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"{len(self.changes)} of {count} changes"
            time.sleep(0.02)

    def finish(self, timeout: float = 60) -> list[int]:
        self.join(timeout)
        assert not self.is_alive(), f"still waiting: {len(self.changes)} of {self.count}"
        if self.error is not None:
            raise self.error
        return [change.revision for change in self.changes]


def test_watch_yields_typed_changes_and_tracks_progress(staff, server, store):
    start = staff.stats().version
    first = staff.put("wt:basic", {"n": 1}).revision
    staff.delete("wt:basic")
    staff.put("wt:other", 1)  # another prefix: not seen
    with staff.watch(
        ["wt:basic"],
        since_revision=start,
        progress_interval=PROGRESS_INTERVAL,
        include_progress=True,
    ) as watch:
        changes = [next(watch), next(watch)]
        assert [(c.op, c.key, c.new_value) for c in changes] == [
            ("set", "wt:basic", {"n": 1}),
            ("delete", "wt:basic", None),
        ]
        assert changes[0].revision == first and changes[1].old_value == {"n": 1}
        progress = next(watch)
        assert isinstance(progress, sh.Progress) and progress.revision >= first + 2
        assert watch.revision == progress.revision


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_watch_yields_every_change_once_through_a_server_killed_mid_stream(
    server, store, start_server, mode
):
    watched = start_server()  # the writes go to `server`, which stays up
    prefix = f"restart-{mode}:"
    with Client(server.url, store.staff_token) as writer:
        start = writer.stats().version
        collector = Collector(watched.url, store.staff_token, [prefix], start, 100, mode)
        collector.start()
        written: list[int] = []

        def write() -> None:
            for i in range(100):
                written.append(writer.put(f"{prefix}{i % 7}", i).revision)
                time.sleep(0.02)

        thread = threading.Thread(target=write)
        thread.start()
        collector.wait_for(20)
        watched.kill()  # SIGKILL mid-stream: no close frame; writes go on meanwhile
        time.sleep(0.5)
        watched.start()  # same port
        thread.join()
        assert collector.finish() == written
    assert sum(collector.watch.disconnects.values()) >= 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_lagged_cut_off_resumes_without_loss(store, start_server, mode):
    # A bulk of 20 is more than a 5-frame outbox: every live subscriber is cut off (4008).
    tiny = start_server(STATE_STREAM_QUEUE_SIZE="5")
    prefix = f"lag-{mode}:"
    with Client(tiny.url, store.staff_token) as client:
        start = client.stats().version
        collector = Collector(tiny.url, store.staff_token, [prefix], start, 100, mode)
        collector.start()
        written: list[int] = []
        for batch in range(5):
            time.sleep(0.5)  # let the watch catch up and go live again
            client.bulk(
                [{"op": "set", "key": f"{prefix}{batch}:{i}", "value": i} for i in range(20)]
            )
        written = [e.revision for e in client.entries(prefix)]
        assert collector.finish() == sorted(written)
    assert collector.watch.disconnects["lagged"] >= 1


class Blackhole:
    """A TCP proxy whose open connections can be silenced: a peer that is gone without a FIN."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.opened = 0
        self.silent_below = 0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> None:
        """From now on, drop whatever the connections opened so far carry."""
        self.silent_below = self.opened

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(("127.0.0.1", self.target))
            number, self.opened = self.opened, self.opened + 1
            self.sockets += [near, far]
            for source, sink in ((near, far), (far, near)):
                threading.Thread(
                    target=self._pump, args=(source, sink, number), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, number: int) -> None:
        try:
            while data := source.recv(65536):
                if number >= self.silent_below:
                    sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_a_silent_connection_is_replaced_and_resumed(server, store):
    proxy = Blackhole(server.port)
    try:
        with Client(server.url, store.staff_token) as writer:
            start = writer.stats().version
            collector = Collector(
                f"http://127.0.0.1:{proxy.port}", store.staff_token, ["silent:"], start, 10, "sync"
            )
            collector.start()
            written = [writer.put(f"silent:{i}", i).revision for i in range(5)]
            collector.wait_for(5)
            proxy.silence()
            written += [writer.put(f"silent:{i}", i).revision for i in range(5, 10)]
            assert collector.finish(timeout=20) == written
        assert collector.watch.disconnects["silence"] >= 1
    finally:
        proxy.close()


def test_restore_raises_resync_required_with_the_reset_revision(staff):
    start = staff.stats().version
    snapshot = staff.create_snapshot("watch-reset")
    restored = staff.restore_snapshot(snapshot.id)
    with staff.watch(["rs:"], since_revision=start) as watch:
        with pytest.raises(sh.ResyncRequired) as resync:
            next(watch)
    assert resync.value.reason == "state_reset"
    assert (resync.value.revision, resync.value.snapshot_id) == (restored.revision, snapshot.id)
    with pytest.raises(StopIteration):
        next(watch)  # a watch that raised is finished


def test_a_compacted_log_raises_resync_required(staff, store):
    staff.put("cmp:a", 1)
    staff.put("cmp:a", 2)
    env = {**store.env, "STATE_EVENT_RETENTION_COUNT": "1", "STATE_PERSISTENCE_ENABLED": "false"}
    worker = subprocess.run(
        [sys.executable, "manage.py", "state_worker", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    with staff.watch(["cmp:"], since_revision=0) as watch:
        with pytest.raises(sh.ResyncRequired) as resync:
            next(watch)
    assert resync.value.reason == "revision_compacted" and resync.value.oldest_revision > 1


def test_watch_errors_that_reconnecting_cannot_fix(server, store, alice):
    with Client(server.url, "not-a-token") as stranger, pytest.raises(sh.Unauthenticated):
        next(iter(stranger.watch(["global:"])))
    with pytest.raises(sh.PermissionDenied) as denied:
        next(iter(alice.watch(["user:bob"])))
    assert denied.value.details["prefixes"] == ["user:bob"]
