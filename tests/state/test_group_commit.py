"""Group commit: concurrent writers share transactions, and each behaves as if it ran alone.

Threads (and processes) run a random mix of set, CAS (many failing), incr, delete and atomic
bulks on a few overlapping keys. Afterwards the event log is checked against a sequential
replay on a model of the store: every request that changed something is replayed at the
position its revisions give it and must produce exactly its recorded outcome and its events;
every request that failed must fail the same way at some position within the revisions it
could have seen; revisions are gapless. Each request writes with its own `source`, so its
events are its own.
"""

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from state import selectors, services
from state.exceptions import StateError
from state.models import StateEvent
from state.services import writes

ROOT = Path(__file__).resolve().parents[2]
KEYS = [f"g{n}" for n in range(6)]


# --- the workload -------------------------------------------------------------------------


def _request(rng: random.Random, source: str) -> dict[str, Any]:
    key = rng.choice(KEYS)
    kind = rng.choice(["set", "set", "cas", "cas", "incr", "incr", "delete", "bulk"])
    if kind == "set":
        return {"kind": kind, "key": key, "value": rng.randint(0, 9),
                "expected_version": rng.choice([None, None, rng.randint(0, 4)])}  # fmt: skip
    if kind == "cas":
        return {"kind": kind, "key": key, "expected": rng.choice([None, *range(5)]),
                "new_value": rng.choice([None, *range(5)])}  # fmt: skip
    if kind == "incr":
        return {"kind": kind, "key": key, "by": rng.randint(1, 3)}
    if kind == "delete":
        return {"kind": kind, "key": key}
    operations = []
    for bulk_key in rng.sample(KEYS, 3):
        op = rng.choice(["set", "set", "cas", "delete"])
        if op == "set":
            operations.append({"op": op, "key": bulk_key, "value": rng.randint(0, 9)})
        elif op == "cas":
            operations.append({"op": op, "key": bulk_key, "expected": rng.choice([None, 1]),
                               "new_value": rng.randint(0, 9)})  # fmt: skip
        else:
            operations.append({"op": op, "key": bulk_key})
    return {"kind": kind, "operations": operations}


def _perform(request: dict[str, Any], source: str) -> dict[str, Any]:
    """Run one request through the services; return its outcome (as JSON-able data)."""
    kind = request["kind"]
    try:
        if kind == "set":
            entry, _ = services.state_set(key=request["key"], value=request["value"],
                                          expected_version=request["expected_version"],
                                          source=source)  # fmt: skip
            return {"ok": True, "version": entry.version, "value": entry.value}
        if kind == "cas":
            result = services.state_cas(key=request["key"], expected=request["expected"],
                                        new_value=request["new_value"], source=source)  # fmt: skip
            return {"ok": True, "version": result.version}
        if kind == "incr":
            entry = services.state_incr(key=request["key"], by=request["by"], source=source)
            return {"ok": True, "version": entry.version, "value": entry.value}
        if kind == "delete":
            entry = services.state_delete(key=request["key"], source=source)
            return {"ok": True, "version": entry.version}
        results = services.state_bulk(operations=request["operations"], source=source)
        return {"ok": True, "versions": [r.version for r in results]}
    except StateError as exc:
        return {"ok": False, "code": exc.code, "index": exc.details.get("index")}


def workload(*, seed: int, rounds: int, tag: str) -> list[dict[str, Any]]:
    """Run `rounds` random requests; return each with its outcome and the revisions around it."""
    rng = random.Random(seed)
    done = []
    for n in range(rounds):
        source = f"{tag}-{n}"
        request = _request(rng, source)
        before = selectors.store_revision()
        outcome = _perform(request, source)
        after = selectors.store_revision()
        done.append({**request, "source": source, "outcome": outcome, "window": [before, after]})
    return done


# --- the model and the replay -------------------------------------------------------------


class Model:
    """The store's rules for these requests, on a dict of key -> (value, version)."""

    def __init__(self, state: dict[str, tuple[Any, int]]) -> None:
        self.state = dict(state)
        self.changes: list[tuple[str, str, Any, Any, int]] = []

    def _put(self, key: str, value: Any) -> int:
        old = self.state.get(key)
        version = old[1] + 1 if old else 1
        self.state[key] = (value, version)
        self.changes.append(("set", key, old[0] if old else None, value, version))
        return version

    def _delete(self, key: str) -> int:
        old = self.state.pop(key)
        self.changes.append(("delete", key, old[0], None, old[1]))
        return old[1]

    def _fail(self, code: str, index: int | None = None) -> None:
        raise _Refused({"ok": False, "code": code, "index": index})

    def _cas(self, key: str, expected: Any, new_value: Any, index: int | None = None) -> int:
        current = self.state.get(key)
        holds = (current is None) if expected is None else (current and current[0] == expected)
        if not holds:
            self._fail("cas_failed", index)
        if new_value is None:
            if current is not None:
                self._delete(key)
            return 0
        return self._put(key, new_value)

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        kind, key = request["kind"], request.get("key")
        try:
            if kind == "set":
                current = self.state.get(key)
                expected = request["expected_version"]
                if expected is not None and expected != (current[1] if current else 0):
                    self._fail("version_conflict")
                version = self._put(key, request["value"])
                return {"ok": True, "version": version, "value": request["value"]}
            if kind == "cas":
                version = self._cas(key, request["expected"], request["new_value"])
                return {"ok": True, "version": version}
            if kind == "incr":
                current = self.state.get(key)
                if current is not None and not isinstance(current[0], int):
                    self._fail("not_a_number")
                value = (current[0] if current else 0) + request["by"]
                return {"ok": True, "version": self._put(key, value), "value": value}
            if kind == "delete":
                if key not in self.state:
                    self._fail("not_found")
                return {"ok": True, "version": self._delete(key)}
            saved, mark, versions = dict(self.state), len(self.changes), []
            try:
                for index, op in enumerate(request["operations"]):
                    if op["op"] == "set":
                        versions.append(self._put(op["key"], op["value"]))
                    elif op["op"] == "cas":
                        versions.append(self._cas(op["key"], op["expected"], op["new_value"],
                                                  index))  # fmt: skip
                    else:
                        if op["key"] not in self.state:
                            self._fail("not_found", index)
                        self._delete(op["key"])
                        versions.append(0)
            except _Refused:
                self.state, self.changes[mark:] = saved, []
                raise
            return {"ok": True, "versions": versions}
        except _Refused as refused:
            return refused.outcome


class _Refused(Exception):
    def __init__(self, outcome: dict[str, Any]) -> None:
        self.outcome = outcome


def check_against_sequential_replay(requests: list[dict[str, Any]], *, base: int) -> None:
    events = list(StateEvent.objects.filter(revision__gt=base).order_by("revision"))
    revisions = [event.revision for event in events]
    assert revisions == list(range(base + 1, base + 1 + len(events))), "gap or repeat"
    assert selectors.store_revision() == base + len(events)
    by_source: dict[str, list[StateEvent]] = {}
    for event in events:
        by_source.setdefault(event.source, []).append(event)
    by_request = {request["source"]: request for request in requests}
    assert set(by_source) <= set(by_request), "an event no request made"

    # The store after every revision, replaying requests in the order their revisions give.
    state: dict[str, tuple[Any, int]] = {}
    states = {base: dict(state)}
    for source in sorted(by_source, key=lambda s: by_source[s][0].revision):
        own = by_source[source]
        assert [e.revision for e in own] == list(range(own[0].revision, own[-1].revision + 1))
        request = by_request[source]
        model = Model(state)
        assert model.run(request) == request["outcome"], request
        assert model.changes == [(e.op, e.key, e.old_value, e.new_value, e.version) for e in own], (
            request
        )
        state = model.state
        for event in own:
            states[event.revision] = state
    # A failed request failed the same way against a store it could have seen.
    failed = [r for r in requests if not r["outcome"]["ok"]]
    for request in failed:
        assert request["source"] not in by_source, "a failed request changed something"
        before, after = request["window"]
        seen = [states[rev] for rev in range(before, after + 1) if rev in states]
        assert any(Model(s).run(request) == request["outcome"] for s in seen), request
    assert failed and len(failed) < len(requests), "the workload should mix outcomes"


def shared_transactions(base: int) -> int:
    """How many transactions committed changes of more than one request (group commit)."""
    sources_by_time: dict[Any, set[str]] = {}
    for timestamp, source in StateEvent.objects.filter(revision__gt=base).values_list(
        "timestamp", "source"
    ):
        sources_by_time.setdefault(timestamp, set()).add(source)
    return sum(1 for sources in sources_by_time.values() if len(sources) > 1)


# --- tests --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_threads_mixing_every_write_behave_as_if_alone_in_revision_order(shared_db):
    base = selectors.store_revision()
    results: list[list[dict[str, Any]]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def run(n: int) -> None:
        try:
            start.wait()
            results.append(workload(seed=n, rounds=30, tag=f"t{n}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(results) == 12
    check_against_sequential_replay([r for rs in results for r in rs], base=base)
    # Twelve writers at once do share transactions (else this tests nothing new).
    assert shared_transactions(base) > 0


SCRIPT = """
import json, threading
import django
django.setup()
from django.db import connection
from tests.state.test_group_commit import workload
results = []
def run(n):
    results.extend(workload(seed={seed} * 10 + n, rounds={rounds}, tag="p{seed}t" + str(n)))
    connection.close()
threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(json.dumps(results))
"""


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_processes_of_threads_behave_as_if_alone_in_revision_order(shared_db):
    base = selectors.store_revision()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PYTHONPATH")},
        "DATABASE_URL": shared_db,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": str(ROOT),
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT.format(seed=seed, rounds=20)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for seed in range(3)
    ]
    outputs = []
    try:
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    requests = [r for output in outputs for r in output]
    assert len(requests) == 3 * 4 * 20
    check_against_sequential_replay(requests, base=base)


def _member(apply) -> writes.Member:
    return writes.Member(actor="test", keys=["a", "b"], apply=apply)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_failed_member_leaves_the_rest_of_its_group_intact():
    services.state_set(key="a", value=1)
    ok1 = _member(lambda batch: services.entries.SetOp.clean(key="a", value=2).apply(batch))
    bad = _member(
        lambda batch: [
            services.entries.SetOp.clean(key="b", value=1).apply(batch),  # undone with it
            services.entries.CasOp.clean(key="a", expected=1, new_value=3).apply(batch),
        ]
    )
    ok2 = _member(lambda batch: services.entries.IncrOp.clean(key="a", by=5).apply(batch))
    writes._run_group([ok1, bad, ok2])
    assert ok1.outcome().version == 2 and ok2.outcome().value == 7
    with pytest.raises(services.entries.CasFailed):
        bad.outcome()
    assert selectors.entry_get(key="a").value == 7
    assert selectors.entry_get(key="b") is None
    ops = list(StateEvent.objects.order_by("revision").values_list("key", "new_value"))
    assert ops == [("a", 1), ("a", 2), ("a", 7)]  # gapless: the failed member took none


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_group_whose_transaction_fails_runs_each_member_alone():
    def broken(batch):
        services.entries.SetOp.clean(key="b", value=1).apply(batch)
        raise RuntimeError("a bug in one writer")

    ok1 = _member(lambda batch: services.entries.SetOp.clean(key="a", value=1).apply(batch))
    bad = _member(broken)
    ok2 = _member(lambda batch: services.entries.SetOp.clean(key="a", value=2).apply(batch))
    writes._run_group([ok1, bad, ok2])
    assert (ok1.outcome().version, ok2.outcome().version) == (1, 2)
    with pytest.raises(RuntimeError):
        bad.outcome()
    assert selectors.entry_get(key="b") is None
    assert selectors.store_revision() == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_pipelined_statement_fails_as_djangos_error_and_leaves_no_trace():
    # PostgreSQL raises a pipelined statement's error when the pipeline syncs, outside
    # Django's cursor: unwrapped, a lost database would not be OperationalError (503), and
    # group commit would not know to stop retrying.
    if connection.vendor != "postgresql":
        pytest.skip("Pipeline mode is PostgreSQL's.")
    from django.db import DataError, transaction

    with pytest.raises(DataError), transaction.atomic():
        with writes._pipelined(), connection.cursor() as cursor:
            cursor.execute(writes._BUMP, [1])
            cursor.execute("SELECT 1 / 0")
    assert selectors.store_revision() == 0
    services.state_set(key="a", value=1)  # the connection is usable again
    assert selectors.store_revision() == 1
