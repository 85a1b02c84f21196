"""Real daphne processes on stores of their own, for the client's end-to-end tests.

The helpers come from tests/e2e/conftest.py; the fixtures cannot be shared from there (they are
only visible under tests/e2e/, and a second copy of `e2e_env` would drop and recreate the same
PostgreSQL database under the first one's servers), and these tests restore snapshots and kill
servers, which must not disturb the other end-to-end tests' store.
"""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from statehub_client import Client
from tests.e2e.conftest import (
    ROOT,
    SEED_USERS,
    _admin_execute,
    _free_port,
    _is_postgres,
    _manage,
    _postgres_url,
    _wait_ready,
)

PROGRESS_INTERVAL = 1.0  # the servers' STATE_PROGRESS_INTERVAL_SECS


@dataclass(frozen=True)
class Store:
    env: dict[str, str]
    tokens: dict[str, str]

    @property
    def staff_token(self) -> str:
        return self.tokens["e2e-staff"]


@contextmanager
def new_store(name: str, directory: Path) -> Iterator[Store]:
    """A migrated, empty store with a staff user and alice, on a database of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        LOG_LEVEL="WARNING",
        STATE_PROGRESS_INTERVAL_SECS=str(PROGRESS_INTERVAL),
        STATE_STREAM_POLL_INTERVAL_SECS="0.5",
        PYTHONUNBUFFERED="1",
        STATE_SNAPSHOT_DIR=str(directory / "snapshots"),
    )
    db = settings.DATABASES["default"]
    database = f"statehub_{name}_{os.getpid()}"
    if _is_postgres():
        if not settings.REDIS_URL:
            pytest.fail("The PostgreSQL run needs REDIS_URL for the end-to-end client tests.")
        _admin_execute(db, f'DROP DATABASE IF EXISTS "{database}"')
        _admin_execute(db, f'CREATE DATABASE "{database}"')
        env.update(DATABASE_URL=_postgres_url(db, database), REDIS_URL=settings.REDIS_URL)
    else:
        env["DATABASE_URL"] = f"sqlite:///{directory / 'store.sqlite3'}"
    try:
        _manage(env, "migrate", "--noinput")
        tokens = json.loads(_manage(env, "shell", "-c", SEED_USERS).strip().splitlines()[-1])
        yield Store(env=env, tokens=tokens)
    finally:
        if _is_postgres():
            _admin_execute(db, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


class ServerProcess:
    """One daphne process that a test may kill, freeze and start again on the same port."""

    def __init__(self, store: Store, log_dir: Path, **environment: str) -> None:
        self.env = {**store.env, **environment}
        self.token = store.staff_token
        self.log_dir = log_dir
        self.port = _free_port(set())
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        log = self.log_dir / f"daphne-{self.port}.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "config.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("a"),
        )
        _wait_ready(self.process, self.port, log)
        # Ready, but is it ours? Another run's server on this port would not know our token.
        with Client(self.url, self.token) as client:
            client.stats()
        return self

    def kill(self) -> None:
        """Kill the process outright (SIGKILL): no close frames, no clean shutdown."""
        self.process.kill()
        self.process.wait()

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.thaw()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Iterator[Store]:
    with new_store("client", tmp_path_factory.mktemp("client-store")) as made:
        yield made


@pytest.fixture(scope="session")
def server(store, tmp_path_factory) -> Iterator[ServerProcess]:
    process = ServerProcess(store, tmp_path_factory.mktemp("client-logs")).start()
    yield process
    process.stop()


@pytest.fixture
def start_server(store, tmp_path):
    """Start private servers on the shared store (extra settings as keywords); stopped after."""
    started: list[ServerProcess] = []

    def start(on: Store = store, **environment: str) -> ServerProcess:
        process = ServerProcess(on, tmp_path, **environment)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def staff(server, store) -> Iterator[Client]:
    with Client(server.url, store.staff_token) as client:
        yield client


@pytest.fixture
def alice(server, store) -> Iterator[Client]:
    with Client(server.url, store.tokens["alice"]) as client:
        yield client
