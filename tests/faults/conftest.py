"""Fault tests: a private PostgreSQL cluster and Redis, started here, and real server processes.

Never the machine's services: the cluster is `initdb`'d into a temporary directory and runs on
a port of its own (as the `postgres` user when the tests run as root, which initdb refuses),
and each test gets its own Redis (`redis-server --save "" --appendonly no`) and a database
copied from a migrated template. These run on the PostgreSQL + Redis run only; there a
missing binary is a failure, not a skip.
"""

import http.client
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings

from tests.e2e.conftest import _free_port

ROOT = Path(__file__).resolve().parents[2]

SEED = """
import json
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
staff = User.objects.create_user("fault-staff", is_staff=True)
print(json.dumps({"staff": Token.objects.create(user=staff).key}))
"""


@pytest.fixture(autouse=True)
def _postgres_run_only() -> None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip(
            "Fault tests run on the PostgreSQL + Redis run only: they kill and restart a "
            "private PostgreSQL cluster and Redis, which the embedded default does not use."
        )


def free_port() -> int:
    port = _free_port(_used_ports)
    _used_ports.add(port)
    return port


_used_ports: set[int] = set()
_databases = itertools.count(1)


def _postgres_bindir() -> Path:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    pytest.fail("initdb/pg_ctl not found (looked in /usr/lib/postgresql/*/bin and PATH).")


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on its own port and directory."""

    def __init__(self) -> None:
        self.bindir = _postgres_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="statehub-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:  # initdb refuses to run as root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("Running as root, but there is no 'postgres' user to run initdb as.")
            self.user = "postgres"
            shutil.chown(self.root, user="postgres")

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr or result.stdout}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip

    def start(self) -> None:
        # fsync off: these tests kill processes, not the machine, so the OS page cache keeps
        # every committed write across a PostgreSQL crash; synchronous_commit stays on.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster: "fast" (clean shutdown) or "immediate" (like a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def connect(self, name: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(name), autocommit=True, connect_timeout=5)

    def execute(self, sql: str, name: str = "postgres", params=None) -> list[tuple]:
        with self.connect(name) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def start_if_stopped(self) -> None:
        try:
            self.execute("SELECT 1")
        except Exception:  # noqa: BLE001 - down: a test stopped it
            self.start()

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001 - it may be stopped already
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A throwaway redis-server on its own port, with no persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found on PATH.")
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@dataclass
class Process:
    """A server or worker process of ours."""

    popen: subprocess.Popen
    log: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.alive:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def request(self, method: str, path: str, token: str, body=None, timeout: float = 15):
        """Return (status, envelope); raise OSError when the connection fails."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            payload = json.dumps(body) if body is not None else None
            connection.request(method, path, payload, headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()


@dataclass
class Faults:
    """What one test starts: a database of its own, servers, workers and a Redis."""

    postgres: PrivatePostgres
    template: str
    token: str
    tmp: Path
    redis: PrivateRedis = field(default_factory=PrivateRedis)
    started: list[Process] = field(default_factory=list)
    database: str = ""

    def __post_init__(self) -> None:
        self.database = f"statehub_fault_{os.getpid()}_{next(_databases)}"
        self.postgres.execute(f'CREATE DATABASE "{self.database}" TEMPLATE "{self.template}"')
        self.redis.start()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(
            DATABASE_URL=self.postgres.url(self.database),
            REDIS_URL=self.redis.url,
            DEBUG="false",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            STATE_STREAM_POLL_INTERVAL_SECS="0.5",
            STATE_PROGRESS_INTERVAL_SECS="1",
            # A request waits this long for a database connection before answering 503.
            DATABASE_POOL_TIMEOUT_SECS="2",
            DATABASE_POOL_MAX_SIZE="10",
            STATE_EXPIRE_INTERVAL_SECS="0.5",
            STATE_WORKER_TICK_SECS="0.2",
            STATE_PERSISTENCE_ENABLED="false",
            STATE_SNAPSHOT_DIR=str(self.tmp / "snapshots"),
            # These tests account for every revision (assert_gapless reads the log and the
            # store revision in two statements) and time requests during outages; request
            # tracking's own batches, committing a moment after each request, would land
            # between those reads and queue in the group commit beside the load.
            STATE_TRACK_REQUESTS="false",
            STATE_PROPAGATE_STATE="false",
        )
        env.update(extra)
        return env

    def server(self, **extra: str) -> Process:
        port = free_port()
        log = self.tmp / f"daphne-{port}.log"
        popen = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "config.asgi:application"],
            cwd=ROOT, env=self.env(**extra), stdout=subprocess.DEVNULL, stderr=log.open("w"),
        )  # fmt: skip
        process = Process(popen=popen, log=log, port=port)
        self.started.append(process)
        self._wait_ready(process)
        return process

    def worker(self) -> Process:
        log = self.tmp / f"worker-{len(self.started)}.log"
        popen = subprocess.Popen(
            [sys.executable, "manage.py", "state_worker"], cwd=ROOT, env=self.env(),
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        process = Process(popen=popen, log=log)
        self.started.append(process)
        return process

    def manage(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env(), capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    def _wait_ready(self, process: Process, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process.alive:
                raise RuntimeError(f"daphne exited: {process.log.read_text()}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", process.port, timeout=1)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    # Still ours? A daphne that lost the port race exits, and then another
                    # process's server would be the one answering.
                    time.sleep(0.3)
                    if process.alive:
                        return
                    raise RuntimeError(f"daphne exited: {process.log.read_text()}")
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne on port {process.port} did not become ready")

    def sql(self, query: str, params=None) -> list[tuple]:
        return self.postgres.execute(query, self.database, params)

    def close(self) -> None:
        for process in self.started:
            process.stop()
        self.redis.stop()
        try:
            self.postgres.start_if_stopped()
            self.postgres.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        except Exception:  # noqa: BLE001 - the cluster goes away at the end of the session anyway
            pass


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[tuple[PrivatePostgres, str, str]]:
    """Start the private cluster once; yield it, a migrated template database and a token."""
    cluster = PrivatePostgres()
    try:
        cluster.init()
        cluster.start()
        template = "statehub_fault_template"
        cluster.execute(f'CREATE DATABASE "{template}"')
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env["DATABASE_URL"] = cluster.url(template)
        for args in (["migrate", "--noinput"], ["shell", "-c", SEED]):
            result = subprocess.run(
                [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                text=True, timeout=300,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        token = json.loads(result.stdout.strip().splitlines()[-1])["staff"]
        yield cluster, template, token
    finally:
        cluster.remove()


@pytest.fixture
def faults(private_postgres, tmp_path) -> Iterator[Faults]:
    cluster, template, token = private_postgres
    cluster.start_if_stopped()
    started = Faults(postgres=cluster, template=template, token=token, tmp=tmp_path)
    try:
        yield started
    finally:
        started.close()


def wait_for(condition, *, timeout: float, message: str, interval: float = 0.1):
    """Poll `condition` until it returns something truthy; fail with `message` after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s: {message}")


def assert_gapless(faults: Faults) -> int:
    """Assert the event log is 1..R with no gap and R is the store revision; return R."""
    revisions = [row[0] for row in faults.sql("SELECT revision FROM state_stateevent ORDER BY 1")]
    store = faults.sql("SELECT revision FROM state_storerevision WHERE id = 1")[0][0]
    assert revisions == list(range(1, store + 1)), "the revision sequence has a gap"
    return store
