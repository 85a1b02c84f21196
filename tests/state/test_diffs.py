"""The restore preview's merge-join: counts, bounded lists, what differs, and order checks."""

from datetime import UTC, datetime

import pytest

from state.diffs import Item, diff_sorted

LATER = datetime(2031, 1, 1, tzinfo=UTC)


def item(key, value=1, metadata=None, expires_at=None) -> Item:
    return Item(key=key, value=value, metadata=metadata or {}, expires_at=expires_at)


def test_diff_counts_and_lists_each_kind():
    current = [item("a"), item("b", 1), item("c"), item("e", metadata={"m": "1"}), item("f")]
    target = [item("a"), item("b", 2), item("d"), item("e"), item("f", expires_at=LATER)]
    diff = diff_sorted(current=current, target=target)
    assert (diff.added, diff.removed, diff.changed, diff.unchanged) == (1, 1, 3, 1)
    assert diff.added_keys == ["d"] and diff.removed_keys == ["c"]
    assert diff.changed_keys == [("b", ["value"]), ("e", ["metadata"]), ("f", ["expiry"])]
    assert diff.total_changes == 5


def test_diff_compares_values_as_json():
    diff = diff_sorted(
        current=[item("a", 1), item("b", True)], target=[item("a", 1.0), item("b", 1)]
    )
    assert diff.changed_keys == [("b", ["value"])]  # 1 == 1.0, but true is not 1


def test_diff_keeps_only_the_first_keys_but_counts_all():
    diff = diff_sorted(current=iter([]), target=(item(f"k{i:04}") for i in range(5000)), limit=3)
    assert diff.added == 5000 and diff.added_keys == ["k0000", "k0001", "k0002"]


def test_diff_refuses_a_side_out_of_order():
    with pytest.raises(ValueError, match="store keys are not in increasing order"):
        diff_sorted(current=[item("b"), item("a")], target=[])
