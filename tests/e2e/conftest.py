"""Real daphne processes on a dedicated, really committed database.

On the PostgreSQL run (DATABASE_URL=postgres://…) the servers share a database created for
this session and the test run's Redis (REDIS_URL is required then: a missing service is an
error, not a skip); on the embedded default they share a temporary SQLite file.
"""

import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings

from state.management.commands.serve import daphne_command

ROOT = Path(__file__).resolve().parents[2]
# Server ports are drawn at random from this range: test runs side by side (two checkouts,
# two CI jobs) then rarely pick the same free port in the moment between probe and bind.
PORTS = range(20000, 40000)

SEED_USERS = """
import json
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
staff = User.objects.create_user("e2e-staff", is_staff=True)
alice = User.objects.create_user("alice")
print(json.dumps({u.username: Token.objects.create(user=u).key for u in (staff, alice)}))
"""


@dataclass(frozen=True)
class Server:
    port: int
    pid: int

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/state/events"

    def request(self, method: str, path: str, token: str, body=None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            connection.request(method, path, json.dumps(body) if body is not None else None,
                               headers)  # fmt: skip
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def put(self, key: str, value, token: str) -> int:
        """Set a key through the REST API; return the revision of the change."""
        status, body = self.request("PUT", f"/api/v1/state/{key}", token, {"value": value})
        assert status in (200, 201), body
        return body["data"]["revision"]


def _is_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def _postgres_url(db: dict, name: str) -> str:
    auth = quote(db["USER"] or "postgres")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"])
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"


def _admin_execute(db: dict, sql: str) -> None:
    import psycopg

    with psycopg.connect(_postgres_url(db, "postgres"), autocommit=True) as connection:
        connection.execute(sql)


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="session")
def shared_redis() -> bool:
    """Whether this run has PostgreSQL and Redis, so several processes can share a stream."""
    if not _is_postgres():
        return False
    if not settings.REDIS_URL:
        pytest.fail("The PostgreSQL run needs REDIS_URL for the end-to-end stream tests.")
    return True


@pytest.fixture(scope="session")
def e2e_env(shared_redis, tmp_path_factory) -> Iterator[dict[str, str]]:
    """Environment for servers on a fresh, migrated database of their own."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        LOG_LEVEL="WARNING",
        STATE_PROGRESS_INTERVAL_SECS="1",
        STATE_STREAM_POLL_INTERVAL_SECS="0.5",
        PYTHONUNBUFFERED="1",
        STATE_SNAPSHOT_DIR=str(tmp_path_factory.mktemp("snapshots")),
        # These streams assert exact event sequences on alice's default subscription, which
        # her connection's own session record would join (HTTP tracking stays on).
        STATE_PROPAGATE_STATE="false",
    )
    db = settings.DATABASES["default"]
    name = f"statehub_e2e_{os.getpid()}"
    if shared_redis:
        _admin_execute(db, f'DROP DATABASE IF EXISTS "{name}"')
        _admin_execute(db, f'CREATE DATABASE "{name}"')
        env.update(DATABASE_URL=_postgres_url(db, name), REDIS_URL=settings.REDIS_URL)
    else:
        env["DATABASE_URL"] = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'e2e.sqlite3'}"
    try:
        _manage(env, "migrate", "--noinput")
        yield env
    finally:
        if shared_redis:
            _admin_execute(db, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def tokens(e2e_env) -> dict[str, str]:
    return json.loads(_manage(e2e_env, "shell", "-c", SEED_USERS).strip().splitlines()[-1])


def _free_port(taken: set[int]) -> int:
    for port in random.sample(PORTS, 200):
        if port in taken:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"No free port found in {PORTS}.")


def _wait_ready(process: subprocess.Popen, port: int, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daphne on port {port} exited: {log.read_text()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"daphne on port {port} did not become ready")


def start_serve(env: dict[str, str], port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """Start `manage.py serve` on `port`; return the process and the token its banner prints."""
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
    )  # fmt: skip
    banner = "".join(process.stdout.readline() for _ in range(3))
    token = re.search(r"token:\s+(\w+)", banner).group(1)
    _wait_ready(process, port, log, timeout=60)
    return process, token


@contextmanager
def daphne_servers(
    env: dict[str, str], count: int, log_dir: Path
) -> Iterator[list[tuple[subprocess.Popen, Server]]]:
    """Start `count` daphne processes as `manage.py serve` runs them; stop them at the end."""
    started: list[tuple[subprocess.Popen, Server]] = []
    try:
        for _ in range(count):
            port = _free_port({server.port for _, server in started})
            log = log_dir / f"daphne-{port}.log"
            process = subprocess.Popen(
                daphne_command(host="127.0.0.1", port=port),
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
            )  # fmt: skip
            started.append((process, Server(port=port, pid=process.pid)))
            _wait_ready(process, port, log)
        yield started
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.terminate()
        for process, _ in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def servers(e2e_env, tokens, shared_redis, tmp_path_factory) -> Iterator[list[Server]]:
    """Two daphne processes sharing PostgreSQL and Redis, or one on the embedded default."""
    count = 2 if shared_redis else 1
    with daphne_servers(e2e_env, count, tmp_path_factory.mktemp("daphne")) as started:
        yield [server for _, server in started]
