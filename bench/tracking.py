#!/usr/bin/env python
"""Tracking's cost: our GET and PUT with request tracking off and on, one server process.

For each of GET and PUT it runs wrk against a fresh daphne process with
STATE_TRACK_REQUESTS=false, then with true (PostgreSQL, the bench database of bench/run.py,
32 connections by default), and prints req/s, p50, p99, the ratio on/off (the issue asks for
>= 0.80 of the throughput, p99 +25% at most), the tracking records written per second during
the run (counted in the event log) and the writer's batches (from the counters the server
logs when it stops).

  .venv/bin/python bench/tracking.py                     # 10 s per run
  .venv/bin/python bench/tracking.py --duration 3        # a quick sanity check
"""

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (  # noqa: E402
    PG_DB,
    PG_URL,
    Server,
    errors_text,
    prepare_database,
    run_wrk,
    seed,
    server_env,
)


def tracking_events() -> int:
    import psycopg

    with psycopg.connect(f"{PG_URL}/{PG_DB}") as conn:
        return conn.execute(
            "SELECT count(*) FROM state_stateevent WHERE actor = 'tracking'"
        ).fetchone()[0]


def one_run(args, url: str, token: str, scenario: str, tracking: bool) -> dict:
    env = server_env(url, redis=args.redis)
    env["STATE_TRACK_REQUESTS"] = "true" if tracking else "false"
    server = Server(kind="daphne", workers=1, app=args.app, env=env)
    server.start()
    try:
        common = dict(server=server, token=token, connections=args.connections, timeout=2)
        run_wrk(scenario, duration=min(2, args.duration), **common)  # warm up
        before = tracking_events()
        result = run_wrk(scenario, duration=args.duration, **common)
        written = tracking_events() - before
    finally:
        server.stop()
    server.log.seek(0)
    log = server.log.read().decode(errors="replace")
    counters = {}
    if match := re.search(r"tracking: stopped: (.*)", log):
        counters = {k: int(v) for k, v in (pair.split("=") for pair in match.group(1).split())}
    return {"result": result, "written_per_s": written / args.duration, "counters": counters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--app", default="bench.asgi:application", help="ASGI application")
    parser.add_argument("--no-redis", dest="redis", action="store_false",
                        help="the in-memory channel layer instead of Redis")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="statehub-bench-") as tmp:
        url = prepare_database("pg", Path(tmp))
        token = seed(url, args.connections)
        print(f"# daphne x1, PostgreSQL, redis={args.redis}, {args.connections} connections, "
              f"{args.duration}s each", flush=True)  # fmt: skip
        rows = []
        for scenario in ("our GET", "our PUT"):
            off = one_run(args, url, token, scenario, tracking=False)
            on = one_run(args, url, token, scenario, tracking=True)
            for label, run in (("off", off), ("on", on)):
                r = run["result"]
                print(f"  {scenario} tracking {label:<3} {r.rps:8.0f} req/s  p50 {r.p50_ms:6.1f} ms"
                      f"  p99 {r.p99_ms:6.1f} ms  {errors_text(r)}", flush=True)  # fmt: skip
            rows.append((scenario, off, on))
    print(f"\n{'scenario':<8} {'off/s':>7} {'on/s':>7} {'ratio':>6} {'p99 off':>8} {'p99 on':>7} "
          f"{'p99 +%':>7} {'rec/s':>7} {'batches':>8} {'avg batch':>9} {'max':>5} "
          f"{'dropped':>7} {'failed':>6}")  # fmt: skip
    for scenario, off, on in rows:
        a, b, c = off["result"], on["result"], on["counters"]
        batches = c.get("batches", 0)
        average = c.get("operations", 0) / batches if batches else 0
        print(f"{scenario:<8} {a.rps:>7.0f} {b.rps:>7.0f} {b.rps / a.rps if a.rps else 0:>6.2f} "
              f"{a.p99_ms:>8.1f} {b.p99_ms:>7.1f} "
              f"{(b.p99_ms / a.p99_ms - 1) * 100 if a.p99_ms else 0:>+7.0f} "
              f"{on['written_per_s']:>7.0f} {batches:>8} {average:>9.1f} "
              f"{c.get('max_batch_size', 0):>5} {c.get('dropped', 0):>7} "
              f"{c.get('failed', 0):>6}")  # fmt: skip
    print("rec/s: tracking writes committed per second during the measured run (event log);")
    print("batches, avg/max batch: bulk writes of the writer over the server's life (warm-up too).")


if __name__ == "__main__":
    main()
