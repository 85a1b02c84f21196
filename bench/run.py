#!/usr/bin/env python
"""Load-test statehub with wrk against one real server process, next to two baselines.

In one run, on one server process and one database, it measures:
  plain       a plain Django view returning a constant JsonResponse (the framework's ceiling)
  naive GET   a DRF RetrieveUpdateAPIView over a JSONField model, DRF and DB defaults
  naive PUT   the same view, PUT
  our GET / PUT / CAS / incr   the statehub API (/api/v1/state/...)
and prints requests/s, p50 and p99, with our figures as ratios to both baselines.

Examples:
  .venv/bin/python bench/run.py                       # PostgreSQL, daphne, 32 connections
  .venv/bin/python bench/run.py --db sqlite
  .venv/bin/python bench/run.py --sqlite-writers      # SQLite, 32 concurrent PUT connections
  .venv/bin/python bench/run.py --compare-servers     # daphne/uvicorn/granian x 1,2,4 processes
  .venv/bin/python bench/run.py --rate-limiter        # our GET, rate limiter off vs on
"""

import argparse
import atexit
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LUA = ROOT / "bench" / "wrk" / "bench.lua"
PORTS = range(18200, 18300)
PG_URL = "postgres://postgres@127.0.0.1:5432"
# One database per bench run (two runs side by side must not drop each other's), dropped at exit.
PG_DB = f"statehub_bench_{os.getpid()}"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
KEYS = 100
BENCH_SECRET_KEY = secrets.token_urlsafe(50)

# name: (wrk mode, path (a key is appended for get/put), sends our token).
# The baselines come twice: as a Django user gets them (Django's stock ASGI handler, under
# /bench/default/), and with a "+" served by the same HTTP handler as our API.
SCENARIOS = {
    "plain": ("get", "/bench/default/plain?", False),
    "naive GET": ("get", "/bench/default/naive/", False),
    "naive PUT": ("naive_put", "/bench/default/naive/", False),
    "plain+": ("get", "/bench/plain?", False),
    "drf const+": ("get", "/bench/drf?", False),
    "naive GET+": ("get", "/bench/naive/", False),
    "naive PUT+": ("naive_put", "/bench/naive/", False),
    "our GET": ("get", "/api/v1/state/", True),
    "our PUT": ("put", "/api/v1/state/", True),
    "our CAS": ("cas", "/api/v1/state/cas", True),
    "our incr": ("incr", "/api/v1/state/incr", True),
    "our bulk1000": ("bulk", "/api/v1/state/bulk", True),
    "our bulk100": ("bulk", "/api/v1/state/bulk", True),
    "our PUT 1k subs": ("put", "/api/v1/state/", True),
    **{name: ("sql", "", False) for name in ("SQL 1/tx", "SQL 20/tx", "SQL 1000/tx")},
}
# Bulk scenarios: (operations per request, connections). Reported as operations/s too.
BULK = {"our bulk1000": (1000, 2), "our bulk100": (100, 4)}
# our PUT while this many WebSocket subscribers (bench/subscribers.py) receive every change.
SUBSCRIBED = {"our PUT 1k subs": 1000}
# The SQL-level ceiling of the same changes, with pgbench on the same database (PostgreSQL):
# name: (changes per transaction, clients). Each transaction is what our write path sends:
# bump the revision row, read the entries, upsert them, insert their events, commit.
SQL_CEILING = {"SQL 1/tx": (1, 32), "SQL 20/tx": (20, 32), "SQL 1000/tx": (1000, 2)}


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: dict[str, int]
    timeouts: int
    ok: int | None = None
    fail: int | None = None
    raw: str = ""
    cpu_us: float | None = None  # the server's CPU time per request (per operation in a bulk)


# --- database -------------------------------------------------------------------------------


def prepare_database(db: str, workdir: Path) -> str:
    """Create a fresh, migrated bench database and return its DATABASE_URL."""
    if db == "pg":
        import psycopg

        with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {PG_DB}")
        atexit.register(drop_database)
        url = f"{PG_URL}/{PG_DB}"
    else:
        url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    env = server_env(url, redis=False)
    manage = [sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"]
    subprocess.run(manage, env=env, check=True, cwd=ROOT)
    return url


def drop_database() -> None:
    import psycopg

    with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")


def seed(url: str, connections: int) -> str:
    """Create the staff user, token and keys; return the token."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.seed", str(KEYS), str(connections)],
        env=server_env(url, redis=False),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"seeding failed:\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def server_env(url: str, *, redis: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="bench.settings", DATABASE_URL=url, PYTHONPATH=str(ROOT))
    env.setdefault("SECRET_KEY", BENCH_SECRET_KEY)  # servers refuse the embedded default
    env.pop("REDIS_URL", None)
    if redis:
        env["REDIS_URL"] = REDIS_URL
    return env


# --- server ---------------------------------------------------------------------------------


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port in 18200-18299")


class Server:
    """One server (daphne, uvicorn or granian, N processes) started and stopped by PID."""

    def __init__(
        self, *, kind: str, workers: int, app: str, env: dict[str, str], websockets: bool = False
    ) -> None:
        self.kind, self.workers, self.app, self.env = kind, workers, app, env
        self.websockets = websockets  # granian serves WebSockets only when asked
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.log = tempfile.TemporaryFile()

    def start(self) -> None:
        # Own session per server, so stop() can reach workers a master leaves behind.
        common = {
            "env": self.env,
            "cwd": ROOT,
            "stdout": self.log,
            "stderr": self.log,
            "start_new_session": True,
        }
        if self.kind == "daphne" and self.workers == 1:
            cmd = [str(VENV_BIN / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), self.app]
            self.procs.append(subprocess.Popen(cmd, **common))
        elif self.kind == "daphne":
            # Daphne has no worker mode: bind the socket here and let N daphne processes
            # accept on the one inherited descriptor.
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(1024)
            fd = listener.fileno()
            for _ in range(self.workers):
                cmd = [str(VENV_BIN / "daphne"), "--fd", str(fd), self.app]
                self.procs.append(subprocess.Popen(cmd, pass_fds=[fd], **common))
            listener.close()
        elif self.kind == "uvicorn":
            cmd = [
                str(VENV_BIN / "uvicorn"),
                self.app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--no-access-log",
                "--log-level",
                "warning",
                "--lifespan",
                "off",
            ]
            self.procs.append(subprocess.Popen(cmd, **common))
        elif self.kind == "granian":
            cmd = [
                str(VENV_BIN / "granian"),
                "--interface",
                "asgi",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                *([] if self.websockets else ["--no-ws"]),
                "--log-level",
                "warning",
                self.app,
            ]
            self.procs.append(subprocess.Popen(cmd, **common))
        else:
            raise SystemExit(f"unknown server {self.kind}")
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(proc.poll() is not None for proc in self.procs):
                break
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        self.log.seek(0)
        raise SystemExit(f"{self.kind} did not start:\n{self.log.read().decode(errors='replace')}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of every live process of this server (its sessions).

        Per request, it is the figure a busy machine disturbs least: throughput moves with
        whatever else runs on the cores, the CPU a request costs much less."""
        sessions, ticks = set(self.pids()), 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[3]) in sessions:  # the session id (each server starts its own)
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers in this server's own group
            except ProcessLookupError:
                pass


# --- wrk ------------------------------------------------------------------------------------


def run_wrk(
    name: str, *, server: Server, token: str, connections: int, duration: float, timeout: float
) -> Result:
    mode, path, auth = SCENARIOS[name]
    env = dict(os.environ)
    env.update(
        BENCH_MODE=mode, BENCH_PATH=path, BENCH_TOKEN=token if auth else "", BENCH_KEYS=str(KEYS)
    )
    if name in BULK:
        ops, connections = BULK[name]
        env["BENCH_OPS"] = str(ops)
        timeout = max(timeout, 10)
    cmd = [
        shutil.which("wrk") or "/usr/bin/wrk",
        "-t",
        str(connections),
        "-c",
        str(connections),
        "-d",
        f"{duration}s",
        "--timeout",
        f"{timeout}s",
        "--latency",
        "-s",
        str(LUA),
        server.url,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return parse_wrk(name, out)


def parse_wrk(name: str, out: str) -> Result:
    def number(pattern: str, default: str = "0") -> str:
        match = re.search(pattern, out)
        return match.group(1) if match else default

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
        if errors
        else {}
    )
    counts = re.search(r"BENCH_COUNTS ok=(\d+) fail=(\d+)", out)
    ok, fail = (int(counts.group(1)), int(counts.group(2))) if counts else (0, 0)
    return Result(
        name=name,
        rps=float(number(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=int(number(r"BENCH_P50_US (\d+)")) / 1000,
        p99_ms=int(number(r"BENCH_P99_US (\d+)")) / 1000,
        requests=int(number(r"(\d+) requests in")),
        non2xx=int(number(r"Non-2xx or 3xx responses: (\d+)")),
        socket_errors=socket_errors,
        timeouts=socket_errors.get("timeout", 0),
        ok=ok if ok + fail else None,
        fail=fail if ok + fail else None,
        raw=out,
    )


# --- reporting ------------------------------------------------------------------------------


def with_subscribers(server: Server, token: str, count: int):
    """Start `count` subscribers to the bench keys; return the process (READY when connected)."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "subscribers.py"), server.url, token, str(count),
         "k"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    if process.stdout.readline().strip() != "READY":
        process.kill()
        raise SystemExit("the subscribers did not connect")
    return process


PGBENCH = """\\set k random(0, {keys})
BEGIN;
UPDATE state_storerevision SET revision = revision + {n} WHERE id = 1 RETURNING revision;
SELECT "key", "value"::text, "metadata"::text, "version" FROM state_stateentry
  WHERE "key" = ANY(ARRAY(SELECT 'sql' || ((:k + i) % {keys}) FROM generate_series(1, {n}) i));
INSERT INTO state_stateentry ("key", "value", "metadata", "version", "revision", "created_at",
  "updated_at", "expires_at", "source", "size")
  SELECT 'sql' || ((:k + i) % {keys}), '{{"n":1,"name":"bench","tags":["a","b"],"ok":true}}',
    '{{}}', 1, r.revision - {n} + i, now(), now(), NULL, 'sql', 45
  FROM generate_series(1, {n}) i, state_storerevision r WHERE r.id = 1
  ON CONFLICT ("key") DO UPDATE SET "value" = excluded."value", "version" =
    state_stateentry."version" + 1, "revision" = excluded."revision", "updated_at" = now();
INSERT INTO state_stateevent ("revision", "key", "op", "old_value", "new_value", "version",
  "source", "actor", "timestamp")
  SELECT r.revision - {n} + i, 'sql' || ((:k + i) % {keys}), 'set', NULL,
    '{{"n":1,"name":"bench","tags":["a","b"],"ok":true}}', 1, 'sql', 'bench', now()
  FROM generate_series(1, {n}) i, state_storerevision r WHERE r.id = 1;
END;
"""


def pgbench(name: str, *, url: str, duration: float) -> Result:
    """Run the SQL-level ceiling `name` with pgbench; rps counts changes, not transactions."""
    changes, clients = SQL_CEILING[name]
    keys = max(KEYS, changes * 2)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PGBENCH.format(n=changes, keys=keys))
    try:
        out = subprocess.run(
            [shutil.which("pgbench") or "pgbench", "-n", "-f", script.name, "-c", str(clients),
             "-j", "2", "-T", str(int(duration)), "-r", url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
    return Result(name=name, rps=tps * changes, p50_ms=latency, p99_ms=0.0,
                  requests=int(re.search(r"processed: (\d+)", out).group(1)), non2xx=0,
                  socket_errors={}, timeouts=0, raw=out)  # fmt: skip


def errors_text(result: Result) -> str:
    if result.name in SQL_CEILING:
        return f"changes/s (pgbench, {SQL_CEILING[result.name][1]} clients, mean latency)"
    socket_errors = sum(result.socket_errors.values())
    text = f"{result.non2xx} non-2xx, {socket_errors} socket err"
    if result.name in BULK:
        text = f"{result.rps * BULK[result.name][0]:.0f} operations/s; " + text
    if result.timeouts:
        text += f" ({result.timeouts} timeouts)"
    if result.ok is not None:
        text += f"; {result.ok} ok / {result.fail} failed"
    if result.cpu_us is not None:
        text = f"{result.cpu_us:.0f} us CPU/{'op' if result.name in BULK else 'req'}; " + text
    return text


def ratio(result: Result, baseline: Result | None) -> str:
    return f"{result.rps / baseline.rps:.2f}" if baseline and baseline.rps else "-"


def table(results: dict[str, Result]) -> str:
    def naive(name: str, suffix: str) -> Result | None:
        return results.get(("naive GET" if name == "our GET" else "naive PUT") + suffix)

    lines = [
        f"{'scenario':<11} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}  {'x plain':>7} "
        f"{'x naive':>7} {'x plain+':>8} {'x naive+':>8}  errors",
    ]
    for name, r in results.items():
        ours = name.startswith("our ")
        columns = [
            ratio(r, results.get("plain")),
            ratio(r, naive(name, "")) if ours else "-",
            ratio(r, results.get("plain+")),
            ratio(r, naive(name, "+")) if ours else "-",
        ]
        lines.append(
            f"{name:<11} {r.rps:>7.0f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f}  {columns[0]:>7} "
            f"{columns[1]:>7} {columns[2]:>8} {columns[3]:>8}  {errors_text(r)}"
        )
    lines += [
        "plain, naive: served by Django's stock ASGI handler (what a Django user gets).",
        "plain+, naive+: the same views served by the project's HTTP application, like ours.",
        "x naive: our GET against naive GET; our PUT, CAS and incr against naive PUT.",
    ]
    return "\n".join(lines)


# --- modes ----------------------------------------------------------------------------------


def bench(
    args, scenarios: list[str], *, db: str, server_kind: str, workers: int, workdir: Path
) -> dict[str, Result]:
    url = prepare_database(db, workdir)
    token = seed(url, args.connections)
    env = server_env(url, redis=args.redis and db == "pg")
    env["BENCH_HTTP"] = args.http
    server = Server(kind=server_kind, workers=workers, app=args.app, env=env)
    server.start()
    print(
        f"# {server_kind} x{workers} pid(s) {server.pids()} on {server.url}, db={db}, "
        f"redis={'REDIS_URL' in env}, http={args.http}, "
        f"{args.connections} connections, {args.duration}s each",
        flush=True,
    )
    results: dict[str, Result] = {}
    try:
        # Warm up: import everything, fill connection pools.
        run_wrk(
            "our GET",
            server=server,
            token=token,
            connections=args.connections,
            duration=min(2, args.duration),
            timeout=args.timeout,
        )
        for name in scenarios:
            if name in SQL_CEILING:
                continue
            subscribers = with_subscribers(server, token, SUBSCRIBED[name]) if (
                name in SUBSCRIBED) else None  # fmt: skip
            try:
                cpu = server.cpu_seconds()
                results[name] = run_wrk(
                    name,
                    server=server,
                    token=token,
                    connections=args.connections,
                    duration=args.duration,
                    timeout=args.timeout,
                )
                r = results[name]
                operations = r.requests * (BULK[name][0] if name in BULK else 1)
                r.cpu_us = 1e6 * (server.cpu_seconds() - cpu) / max(operations, 1)
            finally:
                if subscribers is not None:
                    received, _ = subscribers.communicate("x", timeout=60)
                    results[name].raw += f"\nsubscribers received {received.strip()} changes"
                    print(f"  ({SUBSCRIBED[name]} subscribers received {received.strip()} "
                          "changes)", flush=True)  # fmt: skip
            if args.raw:
                print(f"## {name}\n{results[name].raw}", flush=True)
            else:
                r = results[name]
                print(
                    f"  {name:<10} {r.rps:8.0f} req/s  p50 {r.p50_ms:7.1f} ms  "
                    f"p99 {r.p99_ms:7.1f} ms  {errors_text(r)}",
                    flush=True,
                )
    finally:
        server.stop()
    for name in scenarios:
        if name in SQL_CEILING and db == "pg":
            results[name] = pgbench(name, url=url, duration=args.duration)
            r = results[name]
            print(f"  {name:<10} {r.rps:8.0f} changes/s  mean {r.p50_ms:7.1f} ms", flush=True)
    return results


def rate_limiter(args, *, workdir: Path) -> None:
    """Our GET with the rate limiter off and on (a rate never reached), alternating, one DB."""
    db = args.db
    url = prepare_database(db, workdir)
    token = seed(url, args.connections)
    redis = args.redis and db == "pg"
    # Counting happens on every request; this rate is never reached, so none is refused.
    configs = {"off": {}, "on": {"STATE_RATE_LIMIT_READ": "1000000000/m"}}
    rounds: dict[str, list[Result]] = {name: [] for name in configs}
    cache = "Redis" if redis else "local memory"
    print(f"# our GET, rate limiter off/on x{args.rounds}, db={db}, cache={cache}, "
          f"{args.connections} connections, {args.duration}s each", flush=True)  # fmt: skip
    for _ in range(args.rounds):
        for name, extra in configs.items():
            env = {**server_env(url, redis=redis), "BENCH_HTTP": args.http, **extra}
            server = Server(kind=args.server, workers=args.workers, app=args.app, env=env)
            server.start()
            try:
                run_wrk("our GET", server=server, token=token, connections=args.connections,
                        duration=min(2, args.duration), timeout=args.timeout)  # fmt: skip
                result = run_wrk("our GET", server=server, token=token,
                                 connections=args.connections, duration=args.duration,
                                 timeout=args.timeout)  # fmt: skip
            finally:
                server.stop()
            rounds[name].append(result)
            print(f"  limiter {name:<3} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.1f} ms  "
                  f"p99 {result.p99_ms:6.1f} ms  {errors_text(result)}", flush=True)  # fmt: skip
    mean = {name: sum(r.rps for r in results) / len(results) for name, results in rounds.items()}
    print(f"\nour GET: limiter off {mean['off']:.0f} req/s, on {mean['on']:.0f} req/s "
          f"(mean of {args.rounds}): on/off = {mean['on'] / mean['off']:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--db",
        choices=["pg", "sqlite"],
        default="pg",
        help="PostgreSQL (database statehub_bench, recreated) or a temp SQLite file (default: pg)",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument(
        "--server",
        choices=["daphne", "uvicorn", "granian"],
        default="daphne",
        help="ASGI server (daphne)",
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes (1)")
    parser.add_argument("--app", default="bench.asgi:application", help="ASGI application")
    parser.add_argument(
        "--http",
        choices=["project", "django"],
        default="project",
        help="what serves our API (see bench/asgi.py): the project's "
        "config.asgi (default) or Django's stock handler",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=2,
        help="wrk request timeout in seconds; slower counts as a timeout (2)",
    )
    parser.add_argument(
        "--no-redis",
        dest="redis",
        action="store_false",
        help="on PostgreSQL, use the in-memory channel layer instead of Redis",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of: " + ", ".join(SCENARIOS),
    )
    parser.add_argument(
        "--sqlite-writers",
        action="store_true",
        help="SQLite, N concurrent PUT connections on our API (and naive PUT)",
    )
    parser.add_argument(
        "--compare-servers",
        action="store_true",
        help="our GET and PUT on PostgreSQL under daphne, uvicorn and granian "
        "with 1, 2 and 4 processes",
    )
    parser.add_argument(
        "--rate-limiter",
        action="store_true",
        help="our GET with the rate limiter off and on (never reached), alternating --rounds "
        "times on one database; prints the on/off throughput ratio",
    )
    parser.add_argument("--rounds", type=int, default=2, help="--rate-limiter rounds (2)")
    parser.add_argument("--raw", action="store_true", help="print wrk's full output")
    args = parser.parse_args()
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    with tempfile.TemporaryDirectory(prefix="statehub-bench-") as tmp:
        workdir = Path(tmp)
        if args.rate_limiter:
            rate_limiter(args, workdir=workdir)
        elif args.sqlite_writers:
            results = bench(
                args,
                ["our PUT", "naive PUT", "naive PUT+"],
                db="sqlite",
                server_kind=args.server,
                workers=args.workers,
                workdir=workdir,
            )
            print(f"\nSQLite, {args.connections} concurrent writers:")
            for r in results.values():
                print(
                    f"  {r.name:<10} {r.rps:8.0f} req/s  p50 {r.p50_ms:.1f} ms  "
                    f"p99 {r.p99_ms:.1f} ms  {errors_text(r)}"
                )
        elif args.compare_servers:
            rows = []
            for kind in ("daphne", "uvicorn", "granian"):
                for workers in (1, 2, 4):
                    results = bench(
                        args,
                        ["our GET", "our PUT"],
                        db="pg",
                        server_kind=kind,
                        workers=workers,
                        workdir=workdir,
                    )
                    rows.append((kind, workers, results))
            print(
                f"\n{'server':<8} {'procs':>5} {'GET/s':>7} {'GET p99':>8} {'PUT/s':>7} "
                f"{'PUT p99':>8}"
            )
            for kind, workers, results in rows:
                get, put = results["our GET"], results["our PUT"]
                print(
                    f"{kind:<8} {workers:>5} {get.rps:>7.0f} {get.p99_ms:>8.1f} "
                    f"{put.rps:>7.0f} {put.p99_ms:>8.1f}"
                )
        else:
            results = bench(
                args,
                scenarios,
                db=args.db,
                server_kind=args.server,
                workers=args.workers,
                workdir=workdir,
            )
            print()
            print(table(results))


if __name__ == "__main__":
    main()
