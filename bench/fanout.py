#!/usr/bin/env python
"""Measure the event stream's fan-out with real daphne processes and real WebSocket clients.

  single      one writer at --rate writes/s, --subscribers connections on ONE server process:
              every event delivered to every subscriber? delivery latency (write acknowledged
              -> message received) p50/p99/max.
  two         the same with two server processes on PostgreSQL + Redis, subscribers split.
  throughput  write throughput (wrk, PUT) with STATE_BROADCAST_CHANGES on vs off: the ratio.

Each scenario gets a fresh database (a temporary SQLite file, or a PostgreSQL database
statehub_stream_bench_<pid> created and dropped here). All clients run in this one asyncio
process; servers are bench/run.py's, on ports 18200-18299.

  .venv/bin/python bench/fanout.py                          # all scenarios
  .venv/bin/python bench/fanout.py single --backend sqlite  # embedded default
  .venv/bin/python bench/fanout.py two --layer groups       # the other channels-redis flavour
"""

import argparse
import asyncio
import gc
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from run import Server  # bench/run.py, beside this script
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
PG_URL = "postgres://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/3"

SEED = """
import json
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
writer = User.objects.create_user("bench-writer", is_staff=True)
viewer = User.objects.create_user("bench-viewer")
print(json.dumps({"writer": Token.objects.create(user=writer).key,
                  "viewer": Token.objects.create(user=viewer).key}))
"""

WRK_LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/api/v1/state/global:tp:" .. (counter % 100), nil,
                    '{"value": {"n": ' .. counter .. '}}')
end
"""


# --- servers ----------------------------------------------------------------------------


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode:
        sys.exit(result.stderr)
    return result.stdout


@contextmanager
def database(backend: str, redis: bool, layer: str):
    """Yield (env, tokens) for servers on a fresh, migrated database."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DEBUG="false", LOG_LEVEL="WARNING", STATE_STREAM_REDIS_LAYER=layer)
    env.setdefault("SECRET_KEY", secrets.token_urlsafe(50))  # servers refuse the embedded default
    if redis:
        env["REDIS_URL"] = REDIS_URL
    tmp = tempfile.mkdtemp(prefix="fanout-")
    name = f"statehub_stream_bench_{os.getpid()}"
    if backend == "postgres":
        import psycopg

        with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            admin.execute(f'CREATE DATABASE "{name}"')
        env["DATABASE_URL"] = f"{PG_URL}/{name}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
    try:
        manage(env, "migrate", "--noinput")
        tokens = json.loads(manage(env, "shell", "-c", SEED).strip().splitlines()[-1])
        yield env, tokens
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if backend == "postgres":
            import psycopg

            with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def servers(env: dict[str, str], count: int, kind: str = "daphne", **extra: str):
    """Start `count` server processes of `kind` (bench/run.py's Server); stop them on exit."""
    started: list[Server] = []
    try:
        for _ in range(count):
            server = Server(kind=kind, workers=1, app="config.asgi:application",
                            env={**env, **extra}, websockets=True)  # fmt: skip
            started.append(server)
            server.start()
        yield [server.port for server in started]
    finally:
        for server in started:
            server.stop()


# --- clients ----------------------------------------------------------------------------


class Writer:
    """A keep-alive HTTP/1.1 client on the event loop, so acks are timed like receipts."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def put(self, key: str, value) -> int:
        body = json.dumps({"value": value}).encode()
        self.writer.write(
            f"PUT /api/v1/state/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        if "transfer-encoding: chunked" in head:
            payload = b""
            while size := int((await self.reader.readline()).strip(), 16):
                payload += await self.reader.readexactly(size)
                await self.reader.readline()
            await self.reader.readline()
        else:
            length = int(re.search(r"content-length: (\d+)", head).group(1))
            payload = await self.reader.readexactly(length)
        return json.loads(payload)["data"]["revision"]


async def subscriber(url: str, token: str, ready: asyncio.Event, counter: list, received: dict):
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(url, additional_headers=headers, compression=None, ping_interval=None,
                       open_timeout=60, max_queue=None) as ws:  # fmt: skip
        await ws.recv()  # subscribed
        counter[0] += 1
        if counter[0] == counter[1]:
            ready.set()
        async for text in ws:
            now = time.perf_counter()
            message = json.loads(text)
            if message["type"] == "state_change":
                received.setdefault(message["data"]["revision"], []).append(now)
            elif message["type"] == "error":
                print("subscriber error:", message)
                return


async def fanout(ports: list[int], tokens: dict, subscribers: int, rate: float, seconds: float):
    urls = [f"ws://127.0.0.1:{port}/api/v1/state/events" for port in ports]
    ready, counter, received = asyncio.Event(), [0, subscribers], {}
    tasks = []
    started = time.perf_counter()
    for i in range(subscribers):
        url = urls[i % len(urls)]
        tasks.append(
            asyncio.create_task(subscriber(url, tokens["viewer"], ready, counter, received))
        )
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # daphne's accept backlog is small
    await asyncio.wait_for(ready.wait(), timeout=120)
    connect_secs = time.perf_counter() - started
    await asyncio.sleep(1)

    # The harness's own collector pauses (1,000 connections' objects) are not the server's.
    gc.collect()
    gc.freeze()
    gc.disable()
    writers = [Writer(port, tokens["writer"]) for port in ports]
    for writer in writers:
        await writer.open()
    acked: dict[int, float] = {}
    sent: dict[int, float] = {}
    writes = int(rate * seconds)
    begin = time.perf_counter()
    cpu_begin = time.process_time()
    for i in range(writes):
        await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))
        sent_at = time.perf_counter()
        revision = await writers[i % len(writers)].put(f"global:price:{i % 10}", {"i": i})
        acked[revision] = time.perf_counter()
        sent[revision] = sent_at
    client_cpu = (time.process_time() - cpu_begin) / (time.perf_counter() - begin)
    gc.enable()
    await asyncio.sleep(2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    spreads = sorted((max(times) - min(times)) * 1000 for times in received.values())
    latencies = sorted(
        max(0.0, t - acked[rev]) * 1000 for rev, times in received.items() if rev in acked
        for t in times
    )  # fmt: skip
    # An upper bound that no ordering of ack and fan-out on the client can flatter.
    from_sent = sorted(
        (t - sent[rev]) * 1000 for rev, times in received.items() if rev in sent for t in times
    )
    delivered = sum(len(received.get(rev, [])) for rev in acked)
    complete = all(len(received.get(rev, [])) == subscribers for rev in acked)

    def pct(p: float, values: list[float] = latencies) -> float:
        return values[min(len(values) - 1, int(p / 100 * len(values)))]

    return {
        "servers": len(ports),
        "subscribers": subscribers,
        "writes": writes,
        "expected": writes * subscribers,
        "delivered": delivered,
        "every_event_to_every_subscriber": complete,
        "p50_ms": round(pct(50), 1),
        "p99_ms": round(pct(99), 1),
        "max_ms": round(latencies[-1], 1),
        "p50_from_request_sent_ms": round(pct(50, from_sent), 1),
        "p99_from_request_sent_ms": round(pct(99, from_sent), 1),
        "connect_secs": round(connect_secs, 1),
        "median_first_to_last_receipt_ms": round(spreads[len(spreads) // 2], 1),
        "client_cpu_share": round(client_cpu, 2),
    }


def wrk_put(port: int, token: str, seconds: int, connections: int) -> float:
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_LUA)
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", script.name,
         "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True,
    )  # fmt: skip
    os.unlink(script.name)
    if "Non-2xx" in result.stdout:
        sys.exit(result.stdout)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))


async def idle_subscribers(port: int, token: str, count: int, seconds: float) -> int:
    """Hold `count` subscribers on `port` for `seconds`; return events they received."""
    ready, counter, received = asyncio.Event(), [0, count], {}
    url = f"ws://127.0.0.1:{port}/api/v1/state/events"
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(subscriber(url, token, ready, counter, received)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(ready.wait(), timeout=120)
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return sum(len(times) for times in received.values())


def throughput(args) -> dict:
    figures = {}
    with database(args.backend, args.backend == "postgres", args.layer) as (env, tokens):
        for label, broadcast in (("off", "false"), ("on", "true")):
            with servers(env, 1, STATE_BROADCAST_CHANGES=broadcast) as ports:
                wrk_put(ports[0], tokens["writer"], 2, args.connections)  # warm up
                figures[f"broadcast_{label}_writes_per_s"] = wrk_put(
                    ports[0], tokens["writer"], args.wrk_seconds, args.connections
                )
        if args.subscribers:
            with servers(env, 1, STATE_BROADCAST_CHANGES="true") as ports:
                # Subscribers watch in this process while wrk (its own process) writes.
                async def watch_while_writing():
                    watching = asyncio.create_task(
                        idle_subscribers(ports[0], tokens["viewer"], args.subscribers,
                                         args.wrk_seconds + 6)
                    )  # fmt: skip
                    await asyncio.sleep(4)
                    rate = await asyncio.to_thread(
                        wrk_put, ports[0], tokens["writer"], args.wrk_seconds, args.connections
                    )
                    return rate, await watching

                rate, events = asyncio.run(watch_while_writing())
                figures[f"broadcast_on_{args.subscribers}_subscribers_writes_per_s"] = rate
                figures["events_delivered_meanwhile"] = events
    off = figures["broadcast_off_writes_per_s"]
    figures["ratio_on_vs_off"] = round(figures["broadcast_on_writes_per_s"] / off, 3)
    if args.subscribers:
        key = f"broadcast_on_{args.subscribers}_subscribers_writes_per_s"
        figures["ratio_on_with_subscribers_vs_off"] = round(figures[key] / off, 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?", default="all",
                        choices=["all", "single", "two", "throughput"])  # fmt: skip
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="writes per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the writer writes")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                        help="database of the single-process and throughput scenarios")  # fmt: skip
    parser.add_argument("--layer", choices=["pubsub", "groups"], default="pubsub",
                        help="channels-redis flavour when Redis is used")  # fmt: skip
    parser.add_argument("--server", choices=["daphne", "uvicorn", "granian"], default="daphne",
                        help="ASGI server of the fan-out scenarios")  # fmt: skip
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--wrk-seconds", type=int, default=10)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    scenarios = ["single", "two", "throughput"] if args.scenario == "all" else [args.scenario]
    for scenario in scenarios:
        if scenario == "throughput":
            result = throughput(args)
            label = f"throughput ({args.backend}, layer {args.layer})"
        else:
            count = 1 if scenario == "single" else 2
            backend = args.backend if scenario == "single" else "postgres"
            redis = backend == "postgres"
            with database(backend, redis, args.layer) as (env, tokens):
                with servers(env, count, args.server) as ports:
                    result = asyncio.run(
                        fanout(ports, tokens, args.subscribers, args.rate, args.seconds)
                    )
            layer = f"redis {args.layer}" if redis else "in-memory"
            label = f"{scenario} ({args.server}, {backend}, {layer})"
        print(f"{label}: {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main()
