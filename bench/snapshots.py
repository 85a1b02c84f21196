"""Snapshot bench: create and restore time, file size and peak memory at two store sizes.

    .venv/bin/python bench/snapshots.py \
        --database-url postgres://postgres@127.0.0.1:5432/statehub_snap_bench

For each size it seeds a fresh database through the write path (state_bulk: ~5 minutes for
100k keys here), then takes a snapshot and restores it, each in a fresh child process, so
that a child's peak RSS (the kernel's high-water mark) is the cost of that one operation on
top of a started Django process.
Targets (issue 4): 100k keys of ~1 KB: create <= 10 s, restore <= 30 s, and peak memory at
100k keys <= 1.2x that at 10k keys.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import inprocess  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def child_seed(keys: int, value_bytes: int) -> dict:
    """Fill the (fresh) store with `keys` entries of about `value_bytes` each, via the services."""
    setup_django()
    from django.conf import settings
    from django.core.management import call_command

    from state import services

    call_command("migrate", verbosity=0)
    started = time.monotonic()
    hex_chars = max(value_bytes - 80, 2)
    operations = []
    for number in range(keys):
        value = {"id": number, "kind": "bench", "payload": os.urandom(hex_chars // 2).hex()}
        operation = {"op": "set", "key": f"bench:{number:08}", "value": value}
        if number % 10 == 0:
            operation["metadata"] = {"owner": "bench"}
        operations.append(operation)
        if len(operations) == settings.STATE_MAX_BULK_OPERATIONS:
            services.state_bulk(operations=operations, source="bench", actor="bench")
            operations.clear()
    if operations:
        services.state_bulk(operations=operations, source="bench", actor="bench")
    return {"seconds": time.monotonic() - started}


def child_create() -> dict:
    setup_django()
    from state import services

    baseline = peak_rss_mib()
    started = time.monotonic()
    snapshot = services.snapshot_create(label="bench", actor="bench", keep=1000)
    return {
        "seconds": time.monotonic() - started,
        "snapshot_id": snapshot.pk,
        "keys": snapshot.key_count,
        "total_size": snapshot.total_size,
        "compressed_size": snapshot.compressed_size,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak_rss_mib(),
    }


def child_restore(snapshot_id: int) -> dict:
    setup_django()
    from state import selectors, services

    baseline = peak_rss_mib()
    started = time.monotonic()
    result = services.state_restore(snapshot_id=snapshot_id, actor="bench")
    seconds = time.monotonic() - started
    assert selectors.store_stats()["total_keys"] == result.key_count
    return {
        "seconds": seconds,
        "keys": result.key_count,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak_rss_mib(),
    }


def fresh_database(url: str) -> None:
    """Drop and create the bench's PostgreSQL database, so each size starts from nothing."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise SystemExit("bench/snapshots.py measures PostgreSQL: give a postgres:// URL.")
    inprocess.fresh_postgres_database(url)


def run_child(env: dict[str, str], *args: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, cwd=ROOT, check=True,
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/statehub_snap_bench"
    )
    parser.add_argument("--sizes", default="10000,100000", help="Comma-separated key counts.")
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "seed":
            print(json.dumps(child_seed(int(rest[0]), int(rest[1]))))
        elif kind == "create":
            print(json.dumps(child_create()))
        elif kind == "restore":
            print(json.dumps(child_restore(int(rest[0]))))
        return

    snapshot_dir = tempfile.mkdtemp(prefix="statehub-snap-bench-")
    env = {**os.environ, "DATABASE_URL": args.database_url, "STATE_SNAPSHOT_DIR": snapshot_dir,
           "LOG_LEVEL": "WARNING"}  # fmt: skip
    env.pop("REDIS_URL", None)
    print(f"database {args.database_url}; snapshot files in {snapshot_dir}")
    results = {}
    for keys in (int(size) for size in args.sizes.split(",")):
        fresh_database(args.database_url)
        seeded = run_child(env, "seed", str(keys), str(args.value_bytes))
        created = run_child(env, "create")
        restored = run_child(env, "restore", str(created["snapshot_id"]))
        results[keys] = (created, restored)
        seeded_in = f"seeded in {seeded['seconds']:.1f}s"
        print(f"\n{keys:>7} keys (~{args.value_bytes} B values, {seeded_in})")
        for name, figures in (("create", created), ("restore", restored)):
            print(
                f"  {name:<7}: {figures['seconds']:6.2f} s   peak RSS "
                f"{figures['peak_rss_mib']:6.1f} MiB (started Django: "
                f"{figures['baseline_rss_mib']:.1f} MiB)"
            )
        print(
            f"  file   : {created['compressed_size'] / 2**20:6.1f} MiB compressed, "
            f"{created['total_size'] / 2**20:.1f} MiB of values"
        )
    sizes = sorted(results)
    if len(sizes) >= 2:
        small, large = results[sizes[0]], results[sizes[-1]]
        print()
        for index, name in enumerate(("create", "restore")):
            ratio = large[index]["peak_rss_mib"] / small[index]["peak_rss_mib"]
            verdict = "ok" if ratio <= 1.2 else "OVER 1.2x"
            print(f"peak memory {name} {sizes[-1]} vs {sizes[0]} keys: {ratio:.2f}x ({verdict})")
    if 100_000 in results:
        created, restored = results[100_000]
        print(f"100k create {created['seconds']:.2f}s (target <= 10s): "
              f"{'ok' if created['seconds'] <= 10 else 'MISSED'}")  # fmt: skip
        print(f"100k restore {restored['seconds']:.2f}s (target <= 30s): "
              f"{'ok' if restored['seconds'] <= 30 else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
