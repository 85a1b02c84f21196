"""Concurrent writers on one key: counts stay exact and revisions stay gapless, in commit order.

Threads share a process (and, on SQLite, its in-process writer queue); processes share only
the database, which is what several server processes do in production.
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import connection

from state import selectors, services
from state.exceptions import CasFailed
from state.models import StateEvent

KEY = "counter"
ROOT = Path(__file__).resolve().parents[2]


def hammer(*, key: str, rounds: int, actor: str) -> int:
    """Add 2 to `key` per round: once by a CAS retry loop, once by incr; return CAS retries."""
    retries = 0
    for _ in range(rounds):
        while True:
            current = selectors.entry_get(key=key).value
            try:
                services.state_cas(key=key, expected=current, new_value=current + 1, actor=actor)
                break
            except CasFailed:
                retries += 1
        services.state_incr(key=key, actor=actor)
    return retries


def assert_exact_and_gapless(*, base: int, changes: int) -> None:
    assert selectors.entry_get(key=KEY).value == changes - 1  # the first change set it to 0
    events = list(StateEvent.objects.filter(revision__gt=base).order_by("revision"))
    assert [e.revision for e in events] == list(range(base + 1, base + changes + 1))
    assert selectors.store_revision() == base + changes
    assert {e.key for e in events} == {KEY}
    # Each write saw the one before it: versions climb by one, and each event's old value
    # is the previous event's new value.
    assert [e.version for e in events] == list(range(1, changes + 1))
    assert all(e.old_value == prev.new_value for prev, e in zip(events, events[1:], strict=False))
    assert [e.new_value for e in events] == list(range(changes))


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_threads_cas_and_incr_on_one_key_are_exact_and_gapless(shared_db):
    threads_count, rounds = 8, 12
    services.state_set(key=KEY, value=0)
    base = selectors.store_revision() - 1
    errors: list[BaseException] = []
    retries: list[int] = []
    start = threading.Barrier(threads_count)

    def run(n: int) -> None:
        try:
            start.wait()
            retries.append(hammer(key=KEY, rounds=rounds, actor=f"thread-{n}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    assert errors == []
    assert len(retries) == threads_count
    assert_exact_and_gapless(base=base, changes=1 + threads_count * rounds * 2)


SCRIPT = """
import django
django.setup()
from tests.state.test_concurrency import hammer
print(hammer(key={key!r}, rounds={rounds}, actor="process-{n}"))
"""


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_processes_cas_and_incr_on_one_key_are_exact_and_gapless(shared_db):
    processes_count, rounds = 4, 15
    services.state_set(key=KEY, value=0)
    base = selectors.store_revision() - 1
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PYTHONPATH")},
        "DATABASE_URL": shared_db,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": str(ROOT),
    }
    if connection.vendor == "postgresql":
        env["DATABASE_POOL_MIN_SIZE"] = "1"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT.format(key=KEY, rounds=rounds, n=n)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes_count)
    ]
    outputs = []
    try:
        for child in children:
            out, err = child.communicate(timeout=90)
            outputs.append((child.returncode, out, err[-2000:]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [code for code, _, _ in outputs] == [0] * processes_count, outputs
    actors = set(StateEvent.objects.filter(revision__gt=base + 1).values_list("actor", flat=True))
    assert actors == {f"process-{n}" for n in range(processes_count)}
    assert_exact_and_gapless(base=base, changes=1 + processes_count * rounds * 2)
