"""The README's run command: `manage.py serve` on the embedded default, server and worker."""

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import _free_port, start_serve


def call(port: int, method: str, path: str, token: str, body=None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def served(tmp_path):
    """`manage.py serve` on a fresh SQLite file; yields (port, token, process)."""
    drop = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        STATE_SECRET_KEY_FILE=str(tmp_path / "var" / "secret_key"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'serve.sqlite3'}",
        STATE_SNAPSHOT_DIR=str(tmp_path / "snapshots"),
        STATE_EXPIRE_INTERVAL_SECS="0.2",
        STATE_WORKER_TICK_SECS="0.1",
        PYTHONUNBUFFERED="1",
    )
    port = _free_port(set())
    process, token = start_serve(env, port, tmp_path / "serve.log")
    try:
        yield port, token, process, tmp_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def test_serve_prints_a_staff_token_and_runs_server_and_worker(served):
    port, token, _, _ = served
    status, body = call(port, "PUT", "/api/v1/state/global:serve", token, {"value": 1, "ttl": 1})
    assert status == 201, body

    # The worker, started beside the server, expires the key: an `expire` event in its history.
    deadline = time.monotonic() + 20
    ops: list[str] = []
    while time.monotonic() < deadline and "expire" not in ops:
        time.sleep(0.3)
        status, body = call(port, "GET", "/api/v1/state/global:serve/history", token)
        ops = [event["op"] for event in body["data"]["events"]] if status == 200 else []
    assert ops[:2] == ["expire", "set"]


def test_serve_stops_server_and_worker_on_sigterm(served):
    port, _, process, _ = served
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(children) == 2  # daphne and the worker

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


def test_serve_generates_a_secret_key_once_and_shares_one_metrics_directory(served):
    port, token, process, tmp_path = served
    key_file = tmp_path / "var" / "secret_key"
    # Owner-only, long and random: the server started with it (DEBUG is false here).
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(key_file.read_text().strip()) >= 50
    assert call(port, "GET", "/api/v1/state/global:none", token)[0] == 404

    # The worker's job runs show in the server's /metrics: both write to one directory.
    deadline = time.monotonic() + 20
    runs = 0.0
    while time.monotonic() < deadline and not runs:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = re.search(
            r'statehub_worker_job_runs_total\{job="expire",outcome="ok"\} (\S+)', text
        )
        runs = float(found.group(1)) if found else 0.0
        time.sleep(0.3)
    assert runs > 0
    assert 'statehub_operations_total{operation="get",outcome="not_found"} 1.0' in text
    assert list((tmp_path / "prometheus").glob("counter_*.db"))
