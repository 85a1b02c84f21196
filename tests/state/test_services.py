"""The one write path: versions, revisions, locks, CAS, incr, metadata, TTL, bulk, audit, events."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from state import events, selectors, services
from state.exceptions import (
    CasFailed,
    InvalidKey,
    NotANumber,
    NotFound,
    ValidationFailed,
    ValueTooLarge,
    VersionConflict,
)
from state.models import StateEntry, StateEvent

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock(db, time_machine):
    """Freeze the clock at T0; tests move it with `clock.shift(seconds)`."""
    time_machine.move_to(T0, tick=False)
    return time_machine


def revision() -> int:
    return selectors.store_revision()


def log() -> list[tuple]:
    """The event log, oldest first, as (revision, op, key, old, new, version, source, actor)."""
    return [
        (e.revision, e.op, e.key, e.old_value, e.new_value, e.version, e.source, e.actor)
        for e in StateEvent.objects.order_by("revision")
    ]


# --- set ----------------------------------------------------------------------------------


def test_state_set_creates_at_version_1_and_bumps_store_revision(db):
    entry, created = services.state_set(key="a", value={"x": 1}, source="svc", actor="ann")
    assert created is True
    assert (entry.key, entry.value, entry.version, entry.revision) == ("a", {"x": 1}, 1, 1)
    assert entry.size == len(b'{"x":1}')
    assert (entry.source, entry.metadata, entry.expires_at) == ("svc", {}, None)
    assert revision() == 1
    assert StateEntry.objects.get(key="a").value == {"x": 1}


def test_state_set_update_bumps_version_and_revision(db):
    services.state_set(key="a", value=1)
    services.state_set(key="b", value=1)
    entry, created = services.state_set(key="a", value=2)
    assert created is False
    assert (entry.version, entry.revision) == (2, 3)
    stored = StateEntry.objects.get(key="a")
    assert (stored.value, stored.version, stored.revision) == (2, 2, 3)
    assert stored.created_at <= stored.updated_at


def test_state_set_keeps_created_at_and_moves_updated_at(clock):
    services.state_set(key="a", value=1)
    clock.shift(5)
    entry, _ = services.state_set(key="a", value=2)
    assert entry.created_at == T0
    assert entry.updated_at == T0 + timedelta(seconds=5)


def test_state_set_records_set_event_with_old_and_new(db):
    services.state_set(key="a", value=1, source="s1", actor="ann")
    services.state_set(key="a", value=[2], source="s2", actor="bob")
    assert log() == [
        (1, "set", "a", None, 1, 1, "s1", "ann"),
        (2, "set", "a", 1, [2], 2, "s2", "bob"),
    ]


def test_state_set_rejects_stale_version(db):
    services.state_set(key="a", value=1)
    services.state_set(key="a", value=2)
    with pytest.raises(VersionConflict) as caught:
        services.state_set(key="a", value=3, expected_version=1)
    assert caught.value.details == {"current_version": 2}
    assert caught.value.status == 409 and caught.value.code == "version_conflict"
    assert StateEntry.objects.get(key="a").value == 2
    assert revision() == 2


def test_state_set_accepts_matching_version(db):
    services.state_set(key="a", value=1)
    entry, _ = services.state_set(key="a", value=2, expected_version=1)
    assert entry.version == 2


def test_state_set_expected_version_0_means_must_not_exist(db):
    entry, created = services.state_set(key="a", value=1, expected_version=0)
    assert (entry.version, created) == (1, True)
    with pytest.raises(VersionConflict) as caught:
        services.state_set(key="a", value=2, expected_version=0)
    assert caught.value.details == {"current_version": 1}


def test_state_set_expected_version_on_absent_key_reports_0(db):
    with pytest.raises(VersionConflict) as caught:
        services.state_set(key="a", value=1, expected_version=3)
    assert caught.value.details == {"current_version": 0}
    assert not StateEntry.objects.exists()
    assert revision() == 0


def test_state_set_metadata_replaces_map_only_when_given(db):
    services.state_set(key="a", value=1, metadata={"owner": "ann", "team": "x"})
    entry, _ = services.state_set(key="a", value=2)
    assert entry.metadata == {"owner": "ann", "team": "x"}
    entry, _ = services.state_set(key="a", value=3, metadata={"owner": "bob"})
    assert StateEntry.objects.get(key="a").metadata == {"owner": "bob"}


def test_state_set_ttl_sets_expiry_and_no_ttl_clears_it(clock):
    entry, _ = services.state_set(key="a", value=1, ttl=30)
    assert entry.expires_at == T0 + timedelta(seconds=30)
    entry, _ = services.state_set(key="a", value=2)
    assert StateEntry.objects.get(key="a").expires_at is None


def test_state_set_with_metadata_ttl_item_sets_expiry(clock):
    entry, _ = services.state_set(key="a", value=1, metadata={"ttl": "60"})
    assert entry.expires_at == T0 + timedelta(seconds=60)


def test_state_set_explicit_ttl_wins_over_metadata_ttl(clock):
    entry, _ = services.state_set(key="a", value=1, ttl=5, metadata={"ttl": "60"})
    assert entry.expires_at == T0 + timedelta(seconds=5)


@pytest.mark.parametrize("ttl", [0, -1, True, 1.5, "x", 10**12])
def test_state_set_rejects_bad_ttl(db, ttl):
    with pytest.raises(ValidationFailed):
        services.state_set(key="a", value=1, ttl=ttl)
    assert revision() == 0


@pytest.mark.parametrize("key", ["", "-a", "a b", "a/b", "a" * 257, "é", None, 5])
def test_state_set_rejects_invalid_key(db, key):
    with pytest.raises(InvalidKey):
        services.state_set(key=key, value=1)


@pytest.mark.parametrize("key", sorted(services.RESERVED_KEYS))
def test_state_set_rejects_reserved_word(db, key):
    with pytest.raises(InvalidKey):
        services.state_set(key=key, value=1)


@pytest.mark.parametrize("key", ["a", "A9", "9", "a" * 256, "user:alice@x.y_z-1", "Keys", "keys:x"])
def test_state_set_accepts_valid_key(db, key):
    entry, _ = services.state_set(key=key, value=1)
    assert entry.key == key


def test_state_set_keys_are_case_sensitive(db):
    services.state_set(key="a", value=1)
    services.state_set(key="A", value=2)
    assert selectors.entry_get(key="a").value == 1
    assert selectors.entry_get(key="A").value == 2


def test_state_set_rejects_null_value(db):
    with pytest.raises(ValidationFailed):
        services.state_set(key="a", value=None)


def test_state_set_rejects_value_over_size_limit(db, settings):
    settings.STATE_MAX_VALUE_BYTES = 10
    services.state_set(key="a", value="12345678")  # 10 bytes with quotes
    with pytest.raises(ValueTooLarge) as caught:
        services.state_set(key="a", value="123456789")
    assert caught.value.details == {"size": 11, "limit": 10}
    assert caught.value.status == 413
    assert StateEntry.objects.get(key="a").value == "12345678"


def test_state_set_measures_size_in_utf8_bytes(db):
    entry, _ = services.state_set(key="a", value="é")
    assert entry.size == 4


def test_state_set_rejects_too_deep_nesting(db, settings):
    settings.STATE_MAX_VALUE_DEPTH = 3
    services.state_set(key="a", value=[[[1]]])
    with pytest.raises(ValidationFailed):
        services.state_set(key="a", value=[[[[1]]]])
    with pytest.raises(ValidationFailed):
        services.state_set(key="a", value={"a": {"b": {"c": {}}}})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [float("-inf")], {1, 2}, b"x"])
def test_state_set_rejects_non_json_value(db, value):
    with pytest.raises(ValidationFailed):
        services.state_set(key="a", value=value)


@pytest.mark.parametrize(
    "value",
    ["a\x00b", {"a\x00": 1}, ["\ud800"], {"\udfff": 1}],
    ids=["nul", "nul-name", "sur", "sur-name"],
)
def test_state_set_rejects_text_the_database_cannot_store(db, value):
    with pytest.raises(ValidationFailed):
        services.state_set(key="a", value=value)
    assert not StateEntry.objects.exists()


@pytest.mark.parametrize(
    "metadata",
    [[], {"a": 1}, {"a": None}, {"": "x"}, {"a": "x\x00"}, {"a\x00": "x"}, {"a": "\ud800"}],
)
def test_state_set_rejects_bad_metadata(db, metadata):
    with pytest.raises(ValidationFailed):
        services.state_set(key="a", value=1, metadata=metadata)


def test_state_set_rejects_too_many_metadata_entries(db, settings):
    settings.STATE_MAX_METADATA_ENTRIES = 2
    services.state_set(key="a", value=1, metadata={"a": "1", "b": "2"})
    with pytest.raises(ValidationFailed):
        services.state_set(key="a", value=1, metadata={"a": "1", "b": "2", "c": "3"})


@pytest.mark.parametrize("source", [None, 5, "x" * 129, "a\x00"])
def test_state_set_rejects_bad_source(db, source):
    with pytest.raises(ValidationFailed):
        services.state_set(key="a", value=1, source=source)


@pytest.mark.parametrize("version", [-1, True, "1", 1.0])
def test_state_set_rejects_bad_expected_version(db, version):
    with pytest.raises(ValidationFailed):
        services.state_set(key="a", value=1, expected_version=version)


def test_state_set_failure_leaves_no_trace(db, doorbells):
    services.state_set(key="a", value=1)
    with pytest.raises(VersionConflict):
        services.state_set(key="a", value=2, expected_version=5)
    assert revision() == 1
    assert len(log()) == 1
    assert doorbells == [1]


# --- delete -------------------------------------------------------------------------------


def test_state_delete_removes_key_and_records_event(db):
    services.state_set(key="a", value=1, actor="ann")
    removed = services.state_delete(key="a", source="api", actor="bob")
    assert (removed.key, removed.value, removed.version) == ("a", 1, 1)
    assert selectors.entry_get(key="a") is None
    assert log()[-1] == (2, "delete", "a", 1, None, 1, "api", "bob")
    assert revision() == 2


def test_state_delete_absent_key_is_not_found(db):
    with pytest.raises(NotFound) as caught:
        services.state_delete(key="a")
    assert caught.value.status == 404
    assert revision() == 0 and log() == []


def test_state_delete_honours_expected_version(db):
    services.state_set(key="a", value=1)
    services.state_set(key="a", value=2)
    with pytest.raises(VersionConflict) as caught:
        services.state_delete(key="a", expected_version=1)
    assert caught.value.details == {"current_version": 2}
    assert selectors.entry_get(key="a").value == 2
    services.state_delete(key="a", expected_version=2)
    assert selectors.entry_get(key="a") is None


def test_state_set_after_delete_starts_again_at_version_1(db):
    services.state_set(key="a", value=1)
    services.state_set(key="a", value=2)
    services.state_delete(key="a")
    entry, created = services.state_set(key="a", value=3)
    assert (entry.version, created, entry.revision) == (1, True, 4)


# --- CAS ----------------------------------------------------------------------------------


def test_state_cas_swaps_when_value_matches(db):
    services.state_set(key="a", value={"n": 1})
    result = services.state_cas(key="a", expected={"n": 1}, new_value={"n": 2}, actor="ann")
    assert (result.swapped, result.version) == (True, 2)
    assert selectors.entry_get(key="a").value == {"n": 2}
    assert log()[-1] == (2, "set", "a", {"n": 1}, {"n": 2}, 2, "", "ann")


def test_state_cas_fails_with_current_value_and_version(db):
    services.state_set(key="a", value=5)
    with pytest.raises(CasFailed) as caught:
        services.state_cas(key="a", expected=4, new_value=6)
    assert caught.value.details == {"current": 5, "version": 1}
    assert caught.value.code == "cas_failed" and caught.value.status == 409
    assert selectors.entry_get(key="a").value == 5
    assert revision() == 1


@pytest.mark.parametrize(
    ("stored", "expected", "matches"),
    [
        (1, 1.0, True),
        (1.0, 1, True),
        (True, 1, False),
        (1, True, False),
        (False, 0, False),
        (0, False, False),
        (True, True, True),
        ("1", 1, False),
        ([1, 2], [1.0, 2], True),
        ([1, 2], [2, 1], False),
        ({"a": 1, "b": [True]}, {"b": [True], "a": 1.0}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": True}, {"a": 1}, False),
        ([], {}, False),
        ("", [], False),
    ],
)
def test_state_cas_compares_values_as_json(db, stored, expected, matches):
    services.state_set(key="a", value=stored)
    if matches:
        assert services.state_cas(key="a", expected=expected, new_value="new").swapped
    else:
        with pytest.raises(CasFailed):
            services.state_cas(key="a", expected=expected, new_value="new")


def test_state_cas_null_expected_means_absent(db):
    result = services.state_cas(key="a", expected=None, new_value=1)
    assert (result.swapped, result.version) == (True, 1)
    with pytest.raises(CasFailed) as caught:
        services.state_cas(key="a", expected=None, new_value=2)
    assert caught.value.details == {"current": 1, "version": 1}


def test_state_cas_on_absent_key_reports_null_and_version_0(db):
    with pytest.raises(CasFailed) as caught:
        services.state_cas(key="a", expected=1, new_value=2)
    assert caught.value.details == {"current": None, "version": 0}


def test_state_cas_null_new_value_deletes(db):
    services.state_set(key="a", value=1)
    result = services.state_cas(key="a", expected=1, new_value=None)
    assert (result.swapped, result.version) == (True, 0)
    assert selectors.entry_get(key="a") is None
    assert log()[-1][:5] == (2, "delete", "a", 1, None)


def test_state_cas_absent_to_absent_changes_nothing(db, doorbells):
    result = services.state_cas(key="a", expected=None, new_value=None)
    assert result.swapped is True
    assert revision() == 0 and log() == [] and doorbells == []


def test_state_cas_by_version(db):
    services.state_set(key="a", value=1)
    assert services.state_cas(key="a", expected_version=1, new_value=2).version == 2
    with pytest.raises(CasFailed) as caught:
        services.state_cas(key="a", expected_version=1, new_value=3)
    assert caught.value.details == {"current": 2, "version": 2}


def test_state_cas_by_version_0_means_absent(db):
    assert services.state_cas(key="a", expected_version=0, new_value=1).version == 1
    with pytest.raises(CasFailed):
        services.state_cas(key="a", expected_version=0, new_value=1)


def test_state_cas_requires_exactly_one_expectation(db):
    with pytest.raises(ValidationFailed):
        services.state_cas(key="a", new_value=1)
    with pytest.raises(ValidationFailed):
        services.state_cas(key="a", expected=1, expected_version=1, new_value=1)


def test_state_cas_ttl_sets_expiry(clock):
    services.state_cas(key="a", expected=None, new_value=1, ttl=10)
    assert StateEntry.objects.get(key="a").expires_at == T0 + timedelta(seconds=10)


def test_state_cas_keeps_metadata(db):
    services.state_set(key="a", value=1, metadata={"m": "1"})
    services.state_cas(key="a", expected=1, new_value=2)
    assert StateEntry.objects.get(key="a").metadata == {"m": "1"}


def test_state_cas_validates_new_value(db, settings):
    settings.STATE_MAX_VALUE_BYTES = 4
    with pytest.raises(ValueTooLarge):
        services.state_cas(key="a", expected=None, new_value="toolong")


# --- incr ---------------------------------------------------------------------------------


def test_state_incr_creates_absent_key_at_by(db):
    entry = services.state_incr(key="n", by=5)
    assert (entry.value, entry.version) == (5, 1)
    assert log()[-1][:6] == (1, "set", "n", None, 5, 1)


def test_state_incr_adds_and_bumps_version(db):
    services.state_incr(key="n")
    services.state_incr(key="n")
    entry = services.state_incr(key="n", by=-10)
    assert (entry.value, entry.version) == (-8, 3)
    assert StateEntry.objects.get(key="n").value == -8
    assert entry.size == 2


def test_state_incr_ttl_applies_only_when_creating(clock):
    entry = services.state_incr(key="n", ttl=10)
    assert entry.expires_at == T0 + timedelta(seconds=10)
    clock.shift(3)
    entry = services.state_incr(key="n", ttl=100)
    assert entry.expires_at == T0 + timedelta(seconds=10)


def test_state_incr_keeps_metadata(db):
    services.state_set(key="n", value=1, metadata={"m": "x"})
    services.state_incr(key="n")
    assert StateEntry.objects.get(key="n").metadata == {"m": "x"}


@pytest.mark.parametrize("value", [1.5, 1.0, "1", True, [1], {"n": 1}])
def test_state_incr_refuses_non_integer(db, value):
    services.state_set(key="n", value=value)
    with pytest.raises(NotANumber) as caught:
        services.state_incr(key="n")
    assert caught.value.status == 409 and caught.value.code == "not_a_number"
    assert StateEntry.objects.get(key="n").version == 1
    assert revision() == 1


def test_state_incr_refuses_overflow(db):
    services.state_set(key="n", value=services.INT64_MAX)
    with pytest.raises(NotANumber):
        services.state_incr(key="n")
    services.state_set(key="m", value=services.INT64_MIN)
    with pytest.raises(NotANumber):
        services.state_incr(key="m", by=-1)
    assert services.state_incr(key="m", by=services.INT64_MAX).value == -1


@pytest.mark.parametrize("by", [1.5, "1", True, None, 2**63])
def test_state_incr_rejects_bad_by(db, by):
    with pytest.raises(ValidationFailed):
        services.state_incr(key="n", by=by)
    assert revision() == 0


# --- metadata -----------------------------------------------------------------------------


def test_state_set_metadata_replaces_map_and_bumps_revision_not_version(db):
    services.state_set(key="a", value=1, metadata={"old": "1", "keep": "2"})
    entry = services.state_set_metadata(key="a", metadata={"new": "x"}, source="s", actor="ann")
    assert (entry.version, entry.revision, entry.metadata) == (1, 2, {"new": "x"})
    stored = StateEntry.objects.get(key="a")
    assert (stored.value, stored.version, stored.revision, stored.metadata) == (
        1, 1, 2, {"new": "x"},
    )  # fmt: skip
    assert log()[-1] == (2, "metadata", "a", {"old": "1", "keep": "2"}, {"new": "x"}, 1, "s", "ann")


def test_state_set_metadata_ttl_item_sets_expiry(clock):
    services.state_set(key="a", value=1)
    entry = services.state_set_metadata(key="a", metadata={"ttl": "20"})
    assert entry.expires_at == T0 + timedelta(seconds=20)


def test_state_set_metadata_without_ttl_keeps_expiry(clock):
    services.state_set(key="a", value=1, ttl=20)
    entry = services.state_set_metadata(key="a", metadata={})
    assert entry.expires_at == T0 + timedelta(seconds=20)


@pytest.mark.parametrize("ttl", ["soon", "0", "-5", "1.5", "²", "٣x", ""])
def test_state_set_metadata_rejects_bad_ttl_item(db, ttl):
    services.state_set(key="a", value=1)
    with pytest.raises(ValidationFailed):
        services.state_set_metadata(key="a", metadata={"ttl": ttl})
    assert revision() == 1


def test_state_set_metadata_absent_key_is_not_found(db):
    with pytest.raises(NotFound):
        services.state_set_metadata(key="a", metadata={})
    assert revision() == 0


# --- TTL ----------------------------------------------------------------------------------


def test_expired_key_reads_as_absent(clock):
    services.state_set(key="a", value=1, ttl=10)
    clock.shift(9)
    assert selectors.entry_get(key="a").value == 1
    clock.shift(1)
    assert selectors.entry_get(key="a") is None
    assert selectors.entries_get_many(keys=["a"]) == {"a": None}
    assert selectors.keys_list().items == []
    assert StateEntry.objects.filter(key="a").exists()  # passive: not swept yet


def test_write_to_expired_key_records_expire_then_creates_version_1(clock):
    services.state_set(key="a", value=1, ttl=10)
    services.state_set(key="a", value=2, ttl=10)
    clock.shift(10)
    entry, created = services.state_set(key="a", value=3, actor="ann")
    assert (entry.version, created, entry.revision) == (1, True, 4)
    assert log()[-2:] == [
        (3, "expire", "a", 2, None, 2, "ttl", "ann"),
        (4, "set", "a", None, 3, 1, "", "ann"),
    ]


def test_expected_version_on_expired_key_sees_absent(clock):
    services.state_set(key="a", value=1, ttl=1)
    clock.shift(1)
    with pytest.raises(VersionConflict) as caught:
        services.state_set(key="a", value=2, expected_version=1)
    assert caught.value.details == {"current_version": 0}
    assert services.state_set(key="a", value=2, expected_version=0)[0].version == 1


def test_delete_of_expired_key_is_not_found_and_changes_nothing(clock):
    services.state_set(key="a", value=1, ttl=1)
    clock.shift(2)
    with pytest.raises(NotFound):
        services.state_delete(key="a")
    assert revision() == 1


def test_incr_of_expired_key_starts_again(clock):
    services.state_incr(key="n", by=7, ttl=5)
    clock.shift(5)
    entry = services.state_incr(key="n")
    assert (entry.value, entry.version, entry.expires_at) == (1, 1, None)
    assert [row[1] for row in log()] == ["set", "expire", "set"]


def test_state_expire_due_sweeps_expired_keys_with_one_event_each(clock, doorbells):
    services.state_set(key="a", value=1, ttl=5)
    services.state_set(key="b", value=2, ttl=10)
    services.state_set(key="c", value=3)
    clock.shift(5)
    assert services.state_expire_due() == 1
    clock.shift(100)
    assert services.state_expire_due(actor="worker") == 1
    assert services.state_expire_due() == 0
    assert set(StateEntry.objects.values_list("key", flat=True)) == {"c"}
    assert log()[-2:] == [
        (4, "expire", "a", 1, None, 1, "ttl", "worker"),
        (5, "expire", "b", 2, None, 1, "ttl", "worker"),
    ]
    assert revision() == 5
    assert doorbells == [1, 2, 3, 4, 5]  # three writes, then two sweeps of one key each


def test_state_expire_due_respects_limit(clock):
    for key in "abc":
        services.state_set(key=key, value=1, ttl=1)
    clock.shift(1)
    assert services.state_expire_due(limit=2) == 2
    assert services.state_expire_due(limit=2) == 1


def test_state_expire_due_with_nothing_due_leaves_revision(db):
    services.state_set(key="a", value=1)
    assert services.state_expire_due() == 0
    assert revision() == 1


# --- bulk ---------------------------------------------------------------------------------


def test_state_bulk_atomic_applies_all_in_order(db):
    services.state_set(key="old", value=1)
    results = services.state_bulk(
        operations=[
            {"op": "set", "key": "a", "value": 1},
            {"op": "set", "key": "a", "value": 2, "expected_version": 1},
            {"op": "cas", "key": "b", "expected": None, "new_value": "x"},
            {"op": "delete", "key": "old"},
        ],
        source="batch",
        actor="ann",
    )
    assert [(r.index, r.op, r.key, r.version, r.error) for r in results] == [
        (0, "set", "a", 1, None),
        (1, "set", "a", 2, None),
        (2, "cas", "b", 1, None),
        (3, "delete", "old", 0, None),
    ]
    assert [row[:3] for row in log()[1:]] == [
        (2, "set", "a"), (3, "set", "a"), (4, "set", "b"), (5, "delete", "old"),
    ]  # fmt: skip
    assert {row[6] for row in log()[1:]} == {"batch"}
    assert revision() == 5


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        ({"op": "set", "key": "a", "value": 9, "expected_version": 7}, VersionConflict),
        ({"op": "cas", "key": "a", "expected": 0, "new_value": 9}, CasFailed),
        ({"op": "delete", "key": "missing"}, NotFound),
    ],
)
def test_state_bulk_atomic_is_all_or_nothing(db, doorbells, failing, error):
    services.state_set(key="a", value=1)
    operations = [
        {"op": "set", "key": "b", "value": 1},
        {"op": "set", "key": "a", "value": 2},
        failing,
    ]
    with pytest.raises(error) as caught:
        services.state_bulk(operations=operations)
    assert caught.value.details["index"] == 2
    assert selectors.entry_get(key="a").value == 1
    assert selectors.entry_get(key="b") is None
    assert revision() == 1 and len(log()) == 1
    assert doorbells == [1]


def test_state_bulk_validates_every_operation_before_applying(db):
    with pytest.raises(ValidationFailed) as caught:
        services.state_bulk(
            operations=[
                {"op": "set", "key": "a", "value": 1},
                {"op": "set", "key": "b", "value": None},
            ],
            atomic=False,
        )
    assert caught.value.details["index"] == 1
    assert revision() == 0


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "rename", "key": "a"},
        {"key": "a", "value": 1},
        {"op": "set", "key": "bad key", "value": 1},
        {"op": "set", "key": "a"},
        {"op": "delete", "key": "a", "value": 1},
        {"op": "cas", "key": "a", "expected": 1},
    ],
)
def test_state_bulk_rejects_malformed_operation_with_its_index(db, operation):
    with pytest.raises((ValidationFailed, InvalidKey)) as caught:
        services.state_bulk(operations=[{"op": "set", "key": "ok", "value": 1}, operation])
    assert caught.value.details["index"] == 1
    assert revision() == 0


def test_state_bulk_rejects_too_many_operations(db, settings):
    settings.STATE_MAX_BULK_OPERATIONS = 2
    with pytest.raises(ValidationFailed):
        services.state_bulk(operations=[{"op": "delete", "key": "a"}] * 3)


def test_state_bulk_non_atomic_reports_each_operation(db, doorbells):
    services.state_set(key="a", value=1)
    results = services.state_bulk(
        operations=[
            {"op": "set", "key": "b", "value": 1},
            {"op": "cas", "key": "a", "expected": 0, "new_value": 9},
            {"op": "delete", "key": "missing"},
            {"op": "set", "key": "a", "value": 2, "expected_version": 1},
        ],
        atomic=False,
    )
    assert [(r.index, r.op, r.key, r.version) for r in results] == [
        (0, "set", "b", 1),
        (1, "cas", "a", None),
        (2, "delete", "missing", None),
        (3, "set", "a", 2),
    ]
    assert results[0].error is None and results[3].error is None
    assert isinstance(results[1].error, CasFailed)
    assert results[1].error.details == {"current": 1, "version": 1}
    assert isinstance(results[2].error, NotFound)
    assert selectors.entry_get(key="a").value == 2
    assert revision() == 3
    assert doorbells == [1, 3]  # the first set, then the bulk's one transaction


# --- events -------------------------------------------------------------------------------


def test_each_committed_write_rings_for_its_revision_a_failed_one_not_at_all(db, doorbells):
    services.state_set(key="a", value=1, source="s")
    services.state_set_metadata(key="a", metadata={"m": "1"})
    services.state_incr(key="n")
    services.state_cas(key="a", expected=1, new_value=2)
    services.state_delete(key="a")
    with pytest.raises(CasFailed):
        services.state_cas(key="n", expected=5, new_value=6)
    assert doorbells == [1, 2, 3, 4, 5]
    assert [row[:3] for row in log()] == [
        (1, "set", "a"), (2, "metadata", "a"), (3, "set", "n"), (4, "set", "a"), (5, "delete", "a"),
    ]  # fmt: skip


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_nothing_is_published_before_commit(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(events, "broadcast", seen.append)
    from django.db import transaction

    with transaction.atomic():
        services.state_set(key="a", value=1)
        services.state_set(key="b", value=1)
        assert seen == []
    assert seen == [1, 2]
    with pytest.raises(RuntimeError), transaction.atomic():
        services.state_set(key="c", value=1)
        raise RuntimeError
    assert seen == [1, 2]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_one_doorbell_per_commit_however_many_changes():
    """A bulk of five changes rings the channel layer once, then the next write once."""

    async def doorbells() -> list[dict]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(events.CHANGES_GROUP, channel)
        try:
            operations = [{"op": "set", "key": f"k{n}", "value": n} for n in range(5)]
            await database_sync_to_async(services.state_bulk)(operations=operations)
            await database_sync_to_async(services.state_set)(key="k9", value=1)
            rung = [await asyncio.wait_for(layer.receive(channel), 3) for _ in range(2)]
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(layer.receive(channel), 0.5)
            return rung
        finally:
            await layer.group_discard(events.CHANGES_GROUP, channel)

    start = selectors.store_revision()
    rung = async_to_sync(doorbells)()
    # A doorbell names at least its commit's last revision (more if a rolled-back write in
    # the same thread left a higher one: only a hint).
    first, second = (message["revision"] for message in rung)
    assert first >= start + 5 and second >= start + 6


# --- query counts -------------------------------------------------------------------------
# Inside the test transaction each write's transaction is a savepoint (2 extra statements).


def test_entry_get_uses_one_query(db, django_assert_num_queries):
    services.state_set(key="a", value=1)
    with django_assert_num_queries(1):
        selectors.entry_get(key="a")


def test_state_set_create_query_count(db, django_assert_num_queries):
    # savepoint, bump revision (the store lock), read entry, upsert entry, insert event, release
    with django_assert_num_queries(6):
        services.state_set(key="a", value=1)


def test_state_set_update_query_count(db, django_assert_num_queries):
    services.state_set(key="a", value=1)
    with django_assert_num_queries(6):
        services.state_set(key="a", value=2)


def test_state_cas_query_count(db, django_assert_num_queries):
    services.state_set(key="a", value=1)
    with django_assert_num_queries(6):
        services.state_cas(key="a", expected=1, new_value=2)


def test_state_incr_query_count(db, django_assert_num_queries):
    services.state_set(key="n", value=1)
    with django_assert_num_queries(6):
        services.state_incr(key="n")


def test_entries_get_many_uses_one_query(db, django_assert_num_queries):
    for key in "abc":
        services.state_set(key=key, value=1)
    with django_assert_num_queries(1):
        selectors.entries_get_many(keys=["a", "b", "c", "d"])


@pytest.mark.parametrize("size", [1, 40, 600])
def test_bulk_query_count_is_constant(db, django_assert_num_queries, size):
    """However many operations: lock, read, delete, write entries, write events, move revision."""
    services.state_bulk(operations=[{"op": "set", "key": f"k{n}", "value": n} for n in range(size)])
    operations = [{"op": "set", "key": f"k{n}", "value": -n} for n in range(size)]
    operations += [{"op": "delete", "key": f"k{n}"} for n in range(0, size, 2)]
    operations += [{"op": "cas", "key": "new", "expected": None, "new_value": 1}]
    # savepoint, bump, read, delete, write entries, write events, move the revision, release
    with django_assert_num_queries(8):
        services.state_bulk(operations=operations)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_failing_doorbell_is_logged_and_the_write_stands(settings, caplog):
    """A channel layer that cannot be reached (a closed port) never fails a committed write."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    entry, _ = services.state_set(key="a", value=1)
    assert selectors.entry_get(key="a").value == 1 and entry.version == 1
    assert any("on_commit" in record.getMessage() for record in caplog.records)
