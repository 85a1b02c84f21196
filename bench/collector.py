"""Garbage-collector bench: CPU per operation of a bulk, collector untuned vs config/heap.py.

    .venv/bin/python bench/collector.py --database-url postgres://postgres@127.0.0.1:5432/statehub_gc_bench

Through Django's test client in one process (no server: the figure is the request's own CPU,
`time.process_time`), posts --bulks bulks of 1,000 `set`s of ~200-byte values, in three
collector modes taken in turn --rounds times: Python's defaults; the start-up heap frozen;
frozen and young collections STATE_GC_THRESHOLD apart (what a server process runs with).
"""

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import inprocess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True, help="a database this bench may drop")
    parser.add_argument("--bulks", type=int, default=20, help="bulks a mode and round (20)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    inprocess.setup(args.database_url, secret_name="collector", STATE_TRACK_REQUESTS="false")
    from django.conf import settings
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from config import heap

    user = User.objects.create_user("bench", is_staff=True)
    client = APIClient(SERVER_NAME="localhost")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    value = {"price": 123.45, "size": 10, "name": "x" * 150}

    def body() -> str:
        operations = [{"op": "set", "key": f"bench:{random.randrange(10_000)}", "value": value}
                      for _ in range(1000)]  # fmt: skip
        return json.dumps({"operations": operations})

    defaults = gc.get_threshold()
    modes = {
        "untuned": lambda: (gc.unfreeze(), gc.set_threshold(*defaults)),
        "frozen": lambda: (gc.unfreeze(), gc.set_threshold(*defaults), gc.collect(), gc.freeze()),
        f"frozen, threshold {settings.STATE_GC_THRESHOLD}": lambda: (gc.unfreeze(), heap.tune()),
    }
    for _ in range(2):  # warm up: imports, connections, the keys' first versions
        client.generic("POST", "/api/v1/state/bulk", body(), content_type="application/json")
    for round_ in range(1, args.rounds + 1):
        for mode, apply in modes.items():
            bodies = [body() for _ in range(args.bulks)]
            apply()
            started = time.process_time()
            for data in bodies:
                response = client.generic(
                    "POST", "/api/v1/state/bulk", data, content_type="application/json"
                )
                assert response.status_code == 200, response.content[:200]
            cpu = (time.process_time() - started) / (1000 * args.bulks) * 1e6
            print(f"round {round_}  {mode:<28} {cpu:6.1f} us CPU per operation", flush=True)


if __name__ == "__main__":
    main()
