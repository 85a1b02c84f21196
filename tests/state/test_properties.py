"""The write path against a plain in-memory model, driven by random operations (hypothesis)."""

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from state import selectors, services
from state.exceptions import (
    CasFailed,
    NotANumber,
    NotFound,
    StateError,
    ValidationFailed,
    VersionConflict,
)
from state.models import StateEntry, StateEvent

T0 = datetime(2031, 6, 1, tzinfo=UTC)
KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.one_of(
    st.integers(-3, 3),
    st.booleans(),
    st.sampled_from([0.0, 1.0, 2.5]),
    st.text(alphabet="xy", max_size=2),
    st.lists(st.integers(0, 1), max_size=2),
    st.dictionaries(st.sampled_from("pq"), st.one_of(st.integers(0, 1), st.booleans()), max_size=2),
)
TTLS = st.one_of(st.none(), st.integers(1, 6))
METADATA = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["owner", "ttl"]), st.sampled_from(["1", "3", "x"]), max_size=2
    ),
)
# How a precondition is chosen: from the model's current state, or deliberately wrong.
# "twin" is the current value with bools and numbers swapped for lookalikes (True/1, 2/2.0),
# which JSON equality must tell apart (or not) exactly.
EXPECT = st.sampled_from(["current", "twin", "absent", "other"])


def twin(value: Any) -> Any:
    if type(value) is bool:
        return int(value)
    if type(value) is int:
        return bool(value) if value in (0, 1) else float(value)
    if type(value) is float:
        return int(value) if value.is_integer() else value
    if isinstance(value, list):
        return [twin(item) for item in value]
    if isinstance(value, dict):
        return {name: twin(item) for name, item in value.items()}
    return value


def json_eq(a: Any, b: Any) -> bool:
    """JSON equality, written independently of the service: bools are not numbers."""
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(json_eq(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def identical(a: Any, b: Any) -> bool:
    """Same JSON with the same types (what a read must give back)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict):
        return set(a) == set(b) and all(identical(a[k], b[k]) for k in a)
    return a == b


class Refused(Exception):
    def __init__(self, error: type[StateError]) -> None:
        self.error = error


@dataclass
class Entry:
    value: Any
    version: int
    metadata: dict[str, str] = field(default_factory=dict)
    expires_at: int | None = None  # seconds after T0


@dataclass
class Model:
    """What the store should hold, including expired entries nobody has swept yet."""

    raw: dict[str, Entry] = field(default_factory=dict)
    now: int = 0
    changes: int = 0

    def live(self, key: str) -> Entry | None:
        entry = self.raw.get(key)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= self.now):
            return None
        return entry

    def touch(self, key: str) -> Entry | None:
        """What a write sees: an expired entry is removed first (one `expire` change)."""
        entry = self.raw.get(key)
        if entry is not None and self.live(key) is None:
            del self.raw[key]
            self.changes += 1
            return None
        return entry

    def expiry(self, ttl: int | None) -> int | None:
        return self.now + ttl if ttl is not None else None

    def resolve(self, key: str, how: str, other: Any) -> tuple[Any, int]:
        """Turn an EXPECT choice into (expected value or None, expected version)."""
        live = self.live(key)
        if how == "current" and live is not None:
            return live.value, live.version
        if how == "twin" and live is not None:
            return twin(live.value), live.version
        if how == "absent" or (how in ("current", "twin") and live is None):
            return None, 0
        return other, (live.version + 3 if live else 2)

    # Each operation mutates the model or raises Refused; callers roll back on Refused.

    def set(self, key, value, *, ttl=None, metadata=None, expected_version=None) -> int:
        if metadata and "ttl" in metadata:
            # A metadata ttl is checked even when `ttl` is given (which then wins).
            metadata_ttl = self.metadata_ttl(metadata)
            ttl = metadata_ttl if ttl is None else ttl
        entry = self.touch(key)
        current = entry.version if entry else 0
        if expected_version is not None and expected_version != current:
            raise Refused(VersionConflict)
        kept = entry.metadata if entry else {}
        self.raw[key] = Entry(
            value, current + 1, dict(metadata) if metadata is not None else kept, self.expiry(ttl)
        )
        self.changes += 1
        return current + 1

    def delete(self, key, *, expected_version=None) -> int:
        entry = self.touch(key)
        if entry is None:
            raise Refused(NotFound)
        if expected_version is not None and expected_version != entry.version:
            raise Refused(VersionConflict)
        del self.raw[key]
        self.changes += 1
        return 0

    def cas(self, key, new_value, *, expected=None, expected_version=None, by_version=False,
            ttl=None) -> int:  # fmt: skip
        entry = self.touch(key)
        if by_version:
            matches = (entry.version if entry else 0) == expected_version
        elif expected is None:
            matches = entry is None
        else:
            matches = entry is not None and json_eq(entry.value, expected)
        if not matches:
            raise Refused(CasFailed)
        if new_value is None:
            if entry is not None:
                del self.raw[key]
                self.changes += 1
            return 0
        version = entry.version + 1 if entry else 1
        self.raw[key] = Entry(new_value, version, entry.metadata if entry else {}, self.expiry(ttl))
        self.changes += 1
        return version

    def incr(self, key, by, *, ttl=None) -> int:
        entry = self.touch(key)
        if entry is None:
            self.raw[key] = Entry(by, 1, {}, self.expiry(ttl))
        else:
            if type(entry.value) is not int:
                raise Refused(NotANumber)
            entry.value += by
            entry.version += 1
        self.changes += 1
        return self.raw[key].value

    def set_metadata(self, key, metadata) -> None:
        ttl = self.metadata_ttl(metadata) if "ttl" in metadata else None
        entry = self.touch(key)
        if entry is None:
            raise Refused(NotFound)
        entry.metadata = dict(metadata)
        if ttl is not None:
            entry.expires_at = self.expiry(ttl)
        self.changes += 1

    @staticmethod
    def metadata_ttl(metadata: dict[str, str]) -> int:
        if not metadata["ttl"].isdecimal() or int(metadata["ttl"]) < 1:
            raise Refused(ValidationFailed)
        return int(metadata["ttl"])

    def expire_due(self) -> int:
        due = [key for key in self.raw if self.live(key) is None]
        for key in due:
            del self.raw[key]
        self.changes += len(due)
        return len(due)


class StoreMachine(RuleBasedStateMachine):
    @initialize()
    def start(self):
        StateEntry.objects.all().delete()
        StateEvent.objects.all().delete()
        self.base = selectors.store_revision()
        self.model = Model()
        self.traveller = time_machine.travel(T0, tick=False)
        self.clock = self.traveller.start()

    def teardown(self):
        if hasattr(self, "traveller"):
            self.traveller.stop()

    def attempt(self, model_op, service_op):
        """Run one operation on a copy of the model and on the store; they must agree."""
        trial = copy.deepcopy(self.model)
        try:
            expected = model_op(trial)
        except Refused as refused:
            with pytest.raises(refused.error):
                service_op()
            return
        result = service_op()
        self.model = trial
        return expected, result

    # --- rules --------------------------------------------------------------------------

    @rule(key=KEYS, value=VALUES, ttl=TTLS, metadata=METADATA, how=st.none() | EXPECT)
    def set(self, key, value, ttl, metadata, how):
        version = None if how is None else self.model.resolve(key, how, None)[1]
        outcome = self.attempt(
            lambda m: m.set(key, value, ttl=ttl, metadata=metadata, expected_version=version),
            lambda: services.state_set(
                key=key, value=value, ttl=ttl, metadata=metadata, expected_version=version
            )[0],
        )
        if outcome:
            assert outcome[1].version == outcome[0]

    @rule(key=KEYS, how=st.none() | EXPECT)
    def delete(self, key, how):
        version = None if how is None else self.model.resolve(key, how, None)[1]
        self.attempt(
            lambda m: m.delete(key, expected_version=version),
            lambda: services.state_delete(key=key, expected_version=version),
        )

    @rule(key=KEYS, how=EXPECT, other=VALUES, new_value=st.none() | VALUES, ttl=TTLS)
    def cas_by_value(self, key, how, other, new_value, ttl):
        expected = self.model.resolve(key, how, other)[0]
        outcome = self.attempt(
            lambda m: m.cas(key, new_value, expected=expected, ttl=ttl),
            lambda: services.state_cas(key=key, expected=expected, new_value=new_value, ttl=ttl),
        )
        if outcome:
            assert outcome[1].swapped and outcome[1].version == outcome[0]

    @rule(key=KEYS, how=EXPECT, new_value=st.none() | VALUES)
    def cas_by_version(self, key, how, new_value):
        version = self.model.resolve(key, how, None)[1]
        outcome = self.attempt(
            lambda m: m.cas(key, new_value, expected_version=version, by_version=True),
            lambda: services.state_cas(key=key, expected_version=version, new_value=new_value),
        )
        if outcome:
            assert outcome[1].version == outcome[0]

    @rule(key=KEYS, by=st.integers(-3, 3), ttl=TTLS)
    def incr(self, key, by, ttl):
        outcome = self.attempt(
            lambda m: m.incr(key, by, ttl=ttl),
            lambda: services.state_incr(key=key, by=by, ttl=ttl),
        )
        if outcome:
            assert identical(outcome[1].value, outcome[0])

    @rule(key=KEYS, metadata=METADATA.filter(lambda m: m is not None))
    def set_metadata(self, key, metadata):
        self.attempt(
            lambda m: m.set_metadata(key, metadata),
            lambda: services.state_set_metadata(key=key, metadata=metadata),
        )

    @rule(
        atomic=st.booleans(),
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("set"), KEYS, VALUES),
                st.tuples(st.just("delete"), KEYS),
                st.tuples(st.just("cas"), KEYS, EXPECT, VALUES, st.none() | VALUES),
            ),
            min_size=1,
            max_size=4,
        ),
    )
    def bulk(self, atomic, ops):
        operations, model_ops = [], []
        for op in ops:
            if op[0] == "set":
                operations.append({"op": "set", "key": op[1], "value": op[2]})
                model_ops.append(lambda m, op=op: m.set(op[1], op[2]))
            elif op[0] == "delete":
                operations.append({"op": "delete", "key": op[1]})
                model_ops.append(lambda m, op=op: m.delete(op[1]))
            else:
                _, key, how, other, new_value = op
                expected = self.model.resolve(key, how, other)[0]
                operations.append(
                    {"op": "cas", "key": key, "expected": expected, "new_value": new_value}
                )
                model_ops.append(lambda m, k=key, e=expected, n=new_value: m.cas(k, n, expected=e))
        if atomic:
            trial = copy.deepcopy(self.model)
            for index, model_op in enumerate(model_ops):
                try:
                    model_op(trial)
                except Refused as refused:
                    with pytest.raises(refused.error) as caught:
                        services.state_bulk(operations=operations, atomic=True)
                    assert caught.value.details["index"] == index
                    return
            results = services.state_bulk(operations=operations, atomic=True)
            assert all(result.error is None for result in results)
            self.model = trial
            return
        results = services.state_bulk(operations=operations, atomic=False)
        for model_op, result in zip(model_ops, results, strict=True):
            trial = copy.deepcopy(self.model)
            try:
                model_op(trial)
            except Refused as refused:
                assert isinstance(result.error, refused.error), result
                continue
            assert result.error is None, result.error
            self.model = trial

    @rule(seconds=st.integers(0, 4))
    def advance_clock(self, seconds):
        self.model.now += seconds
        self.clock.shift(seconds)

    @rule()
    def expire_due(self):
        assert services.state_expire_due() == self.model.expire_due()

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def store_matches_model(self):
        if not hasattr(self, "model"):
            return
        for key in ["a", "b", "c"]:
            expected = self.model.live(key)
            entry = selectors.entry_get(key=key)
            if expected is None:
                assert entry is None, (key, entry.value)
                continue
            assert entry is not None, key
            assert identical(entry.value, expected.value), (key, entry.value, expected.value)
            assert entry.version == expected.version, key
            assert entry.metadata == expected.metadata, key
            want = T0 + timedelta(seconds=expected.expires_at) if expected.expires_at else None
            assert entry.expires_at == want, key
        # Passive expiry: expired rows stay until a write or the sweep removes them.
        assert set(StateEntry.objects.values_list("key", flat=True)) == set(self.model.raw)

    @invariant()
    def revision_advanced_once_per_change(self):
        if not hasattr(self, "model"):
            return
        assert selectors.store_revision() - self.base == self.model.changes
        revisions = list(StateEvent.objects.order_by("revision").values_list("revision", flat=True))
        assert revisions == list(range(self.base + 1, self.base + self.model.changes + 1))


def test_store_agrees_with_model(db):
    run_state_machine_as_test(
        StoreMachine,
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
