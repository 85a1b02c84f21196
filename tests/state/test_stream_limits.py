"""The stream's message limit (`stream.max_message_bytes`) bounds every frame the store can make."""

import pytest

from state import rules, services, stream
from state.models import StateEntry

pytestmark = pytest.mark.django_db


def worst_string(size: int, fill: str = "\x01") -> str:
    """A string value of exactly `size` bytes as stored, every character escaped (6 bytes)."""
    value = fill * ((size - 2) // 6)
    return value + "x" * (size - rules.value_size(value))


def frame_sizes(after: int) -> list[int]:
    return [len(f.text.encode()) for f in stream.read_frames(after=after, limit=100)]


def test_value_size_counts_large_floats_as_the_database_gives_them_back():
    # 1e+300 is stored by PostgreSQL's jsonb as numeric and read back as 301 digits.
    assert rules.value_size([1e300]) == len("[1" + "0" * 300 + "]")
    assert rules.value_size([1.5e16, -2e20, 1e-5]) == len(
        "[15000000000000000,-200000000000000000000,1e-05]"
    )
    entry, _ = services.state_set(key="n:big", value=[1e300] * 10)
    stored = StateEntry.objects.get(pk=entry.pk).value
    assert len(rules.encode_value(stored).encode()) <= entry.size


def test_largest_value_change_fits_the_limit_and_the_limit_is_tight(settings):
    limit, largest = stream.max_message_bytes(), settings.STATE_MAX_VALUE_BYTES
    key = "big:".ljust(256, "k")
    services.state_set(key=key, value=worst_string(largest))
    source = "\x01" * settings.STATE_MAX_SOURCE_LENGTH
    start = services.state_set(key=key, value=worst_string(largest, "\x02"), source=source)
    start = start[0].revision
    numbers = [1e300] * ((largest - 10) // 302)
    numbers.append("x" * (largest - rules.value_size([*numbers, ""])))
    assert rules.value_size(numbers) == largest
    services.state_set(key=key, value=numbers)
    services.state_set(key=key, value=1)

    sizes = frame_sizes(after=start - 1)
    assert max(sizes) <= limit
    assert sizes[0] > limit - 64  # old and new of the largest size, the longest key and source


def test_largest_metadata_change_fits_the_limit(settings):
    settings.STATE_MAX_VALUE_BYTES = 1000  # so that metadata maps make the largest frame
    entries = settings.STATE_MAX_METADATA_ENTRIES
    name_length = settings.STATE_MAX_METADATA_KEY_LENGTH
    services.state_set(key="meta:k", value=1)

    def worst_map(fill: str) -> dict[str, str]:
        return {
            f"{n:04d}".rjust(name_length, fill): fill * settings.STATE_MAX_METADATA_VALUE_LENGTH
            for n in range(entries)
        }

    first = services.state_set_metadata(key="meta:k", metadata=worst_map("\x01")).revision
    services.state_set_metadata(key="meta:k", metadata=worst_map("\x02"))

    sizes = frame_sizes(after=first)
    assert sizes[0] <= stream.max_message_bytes()
    assert sizes[0] > 0.99 * stream.max_message_bytes()
