"""Admin bench: how fast the entry list (and its search, filter, and the event log) render.

    .venv/bin/python bench/admin.py \
        --database-url postgres://postgres@127.0.0.1:5432/statehub_admin_bench --keys 100000

Creates the PostgreSQL database if needed, seeds the store through the write path
(`services.state_bulk`, batches of 1000; skipped when the store already holds exactly that
many keys, so a second run starts at once), then renders each admin page in-process with
Django's test client as a logged-in superuser and prints the median and 95th percentile time
and the number of SQL queries per page. Target (issue 10): the entry list stays fast at
100,000 keys (paginated, no per-row queries, no full COUNT(*) on PostgreSQL).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
NAMESPACES = ["bench", "market", "session", "user"]


def create_postgres_database(database_url: str) -> None:
    """Create the bench's PostgreSQL database if it does not exist yet."""
    import psycopg

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as db:
        if not db.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            db.execute(f'CREATE DATABASE "{name}"')


def setup(database_url: str) -> None:
    if database_url.startswith(("postgres://", "postgresql://")):
        create_postgres_database(database_url)
    sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def seed(keys: int) -> float:
    from django.conf import settings

    from state import services
    from state.models import StateEntry

    if StateEntry.objects.count() == keys:
        return 0.0
    StateEntry.objects.all().delete()  # a bench database only
    started = time.monotonic()
    batch: list[dict] = []
    for number in range(keys):
        namespace = NAMESPACES[number % len(NAMESPACES)]
        operation = {"op": "set", "key": f"{namespace}:{number:08}",
                     "value": {"id": number, "payload": "x" * 200}}  # fmt: skip
        if number % 7 == 0:
            operation["ttl"] = 86_400
        batch.append(operation)
        if len(batch) == settings.STATE_MAX_BULK_OPERATIONS:
            services.state_bulk(operations=batch, source="bench", actor="bench")
            batch.clear()
    if batch:
        services.state_bulk(operations=batch, source="bench", actor="bench")
    return time.monotonic() - started


def measure(client, url: str, repeat: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    timings = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    timings.sort()
    return {
        "median_ms": statistics.median(timings),
        "p95_ms": timings[max(0, int(len(timings) * 0.95) - 1)],
        "queries": len(queries.captured_queries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url", default=f"sqlite:///{ROOT / 'var' / 'bench-admin.sqlite3'}"
    )
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    setup(args.database_url)

    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client

    seconds = seed(args.keys)
    print(f"{connection.vendor}, {args.keys} keys (seeded in {seconds:.0f} s)")
    user, _ = User.objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    middle = f"user:{args.keys // 2 + 3:08}"
    deep = max(1, min(1000, args.keys // 50 // 2))  # a page far into the list
    pages = {
        "entry list, page 1": "/admin/state/stateentry/",
        f"entry list, page {deep}": f"/admin/state/stateentry/?p={deep}",
        "search by key prefix": f"/admin/state/stateentry/?q={middle[:-2]}",
        "namespace filter": "/admin/state/stateentry/?namespace=market",
        "expiring filter": "/admin/state/stateentry/?expiring=yes",
        "one entry's form": f"/admin/state/stateentry/{middle.replace(':', '_3A')}/change/",
        "event log": "/admin/state/stateevent/",
        "event log, one key": f"/admin/state/stateevent/?key={middle}",
    }
    print(f"{'page':<24} {'median ms':>10} {'p95 ms':>8} {'queries':>8}")
    for name, url in pages.items():
        result = measure(client, url, args.repeat)
        print(f"{name:<24} {result['median_ms']:>10.1f} {result['p95_ms']:>8.1f} "
              f"{result['queries']:>8}")  # fmt: skip


if __name__ == "__main__":
    main()
