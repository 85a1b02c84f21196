"""Expiry sweep bench: how fast the worker's `expire` job removes keys whose TTL passed.

    .venv/bin/python bench/expiry.py --database-url postgres://postgres@127.0.0.1:5432/statehub_expiry_bench

Seeds a fresh database with --keys keys through the write path (state_bulk, ttl 1 s), waits
for them to expire, then runs `state_expire_due` (the worker's sweep, --limit keys a
transaction) until none is left, and prints keys removed per second and queries a sweep.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import inprocess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True, help="a database this bench may drop")
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--limit", type=int, default=1000, help="keys a sweep (the worker's)")
    args = parser.parse_args()

    # No server listens here: no doorbells.
    inprocess.setup(args.database_url, secret_name="expiry", STATE_BROADCAST_CHANGES="false")
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from state import services

    value = {"pad": "x" * 160}
    for start in range(0, args.keys, 1000):
        operations = [
            {"op": "set", "key": f"exp:{n}", "value": value, "ttl": 1}
            for n in range(start, min(start + 1000, args.keys))
        ]
        services.state_bulk(operations=operations, actor="bench")
    time.sleep(1.5)
    removed, sweeps, queries = 0, 0, []
    started = time.perf_counter()
    while True:
        with CaptureQueriesContext(connection) as captured:
            done = services.state_expire_due(limit=args.limit, actor="bench")
        if not done:
            break
        removed, sweeps = removed + done, sweeps + 1
        queries.append(len(captured.captured_queries))
    took = time.perf_counter() - started
    print(f"{connection.vendor}: {removed} expired keys removed in {sweeps} sweeps of up to "
          f"{args.limit}, {took:.2f} s = {removed / took:,.0f} keys/s; "
          f"queries a sweep: {min(queries)}-{max(queries)}")  # fmt: skip


if __name__ == "__main__":
    main()
