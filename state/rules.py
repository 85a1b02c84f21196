"""The store's pure rules: key syntax, reserved words, value limits, the JSON encoding.

No ORM and no settings at import time; everything else imports this module and it imports
nothing of ours, which keeps services and selectors free of import cycles.
"""

import json
import re
from decimal import Decimal
from typing import Any

from django.conf import settings

from .exceptions import InvalidKey, ValidationFailed, ValueTooLarge

KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,255}")
# Path words of the HTTP API; a key with one of these names could never be addressed.
RESERVED_KEYS = frozenset(
    {"keys", "entries", "cas", "incr", "mget", "bulk", "stats", "snapshot", "snapshots", "events"}
)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Missing:
    """Marks an argument that was not given (distinct from JSON null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


# --- validation: the single definition of each rule ----------------------------------------


def validate_key(key: Any) -> str:
    """Return `key` if it is a valid, non-reserved key; raise InvalidKey otherwise."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InvalidKey(
            "Keys are 1-256 characters of A-Z a-z 0-9 _ . : @ -, starting with a letter or digit.",
            key=key if isinstance(key, str) else None,
        )
    if key in RESERVED_KEYS:
        raise InvalidKey(f"'{key}' is a reserved word of the API and cannot be a key.", key=key)
    return key


def encode_value(value: Any) -> str:
    """Serialize a value the way its size is measured (compact UTF-8 JSON)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def value_size(value: Any) -> int:
    """Return the serialized size of a storable value; raise if it is not storable."""
    return encode_storable(value)[1]


def encode_storable(value: Any) -> tuple[str, int]:
    """Return a storable value's stored JSON text and its size in bytes; raise if not storable.

    The size is that of the value as every backend gives it back: PostgreSQL's jsonb prints
    numbers positionally, so a float written 1e+300 is read back (and streamed) as a 301-digit
    number, and is counted as one. Without this a 1 MiB value of such numbers came back as
    40 MiB, past every limit derived from this one (the stream's message size).
    """
    if value is None:
        raise ValidationFailed("A value cannot be null; delete the key instead.", field="value")
    try:
        text = encode_value(value)
    except RecursionError as exc:
        raise _too_deep() from exc
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"The value is not valid JSON: {exc}", field="value") from exc
    # The text bounds what a walk of the value could find, and is far cheaper to search (the
    # walk was a third of a bulk's validation): with no more brackets than the depth limit
    # nothing nests deeper, and a NUL always appears escaped as \u0000.
    if text.count("[") + text.count("{") > settings.STATE_MAX_VALUE_DEPTH or "\\u0000" in text:
        check_depth(value)
    try:
        size = len(text.encode())
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise _unstorable() from exc
    if "e+" in text:  # only large floats print with an exponent that grows when written out
        size += _positional_growth(value)
    if size > settings.STATE_MAX_VALUE_BYTES:
        raise ValueTooLarge(
            f"The value is {size} bytes; the limit is {settings.STATE_MAX_VALUE_BYTES}.",
            size=size,
            limit=settings.STATE_MAX_VALUE_BYTES,
        )
    return text, size


def _positional_growth(value: Any) -> int:
    """Return how many bytes the floats of `value` gain when printed without an exponent."""
    growth = 0
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, float):
            text = repr(node)
            if "e+" in text:
                growth += len(format(Decimal(text), "f")) - len(text)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return growth


def storable_text(text: str) -> bool:
    """Whether every database can store `text` (PostgreSQL refuses NUL and lone surrogates)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _too_deep() -> ValidationFailed:
    limit = settings.STATE_MAX_VALUE_DEPTH
    return ValidationFailed(f"The value is nested deeper than {limit} levels.", field="value")


def _unstorable() -> ValidationFailed:
    return ValidationFailed("Strings cannot hold NUL or lone surrogates.", field="value")


def check_depth(value: Any) -> None:
    """Refuse values nested too deep (it breaks JSON encoders) or holding unstorable text."""
    limit = settings.STATE_MAX_VALUE_DEPTH
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not storable_text(node):
                raise _unstorable()
            continue
        if isinstance(node, dict):
            children = node.values()
            stack.extend((name, depth) for name in node)
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise _too_deep()
        stack.extend((child, depth + 1) for child in children)


def clean_metadata(metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, dict):
        raise ValidationFailed("Metadata must be an object of string values.", field="metadata")
    if len(metadata) > settings.STATE_MAX_METADATA_ENTRIES:
        raise ValidationFailed(
            f"Metadata may hold at most {settings.STATE_MAX_METADATA_ENTRIES} entries.",
            field="metadata",
        )
    for name, text in metadata.items():
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= settings.STATE_MAX_METADATA_KEY_LENGTH
            or not storable_text(name)
        ):
            raise ValidationFailed(
                "Metadata names must be strings of 1-"
                f"{settings.STATE_MAX_METADATA_KEY_LENGTH} characters.",
                field="metadata",
            )
        if (
            not isinstance(text, str)
            or len(text) > settings.STATE_MAX_METADATA_VALUE_LENGTH
            or not storable_text(text)
        ):
            raise ValidationFailed(
                f"Metadata value '{name}' must be a string of at most "
                f"{settings.STATE_MAX_METADATA_VALUE_LENGTH} characters.",
                field="metadata",
            )
    return dict(metadata)


def clean_ttl(ttl: Any, *, field: str = "ttl") -> int | None:
    """Return a TTL given as a JSON integer of seconds (None: no expiry); refuse anything else."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise ValidationFailed("ttl must be a JSON integer of seconds.", field=field)
    if not 1 <= ttl <= settings.STATE_MAX_TTL_SECS:
        raise ValidationFailed(
            f"ttl must be between 1 and {settings.STATE_MAX_TTL_SECS} seconds.", field=field
        )
    return ttl


def clean_ttl_text(text: Any, *, field: str = "ttl") -> int | None:
    """Return a TTL typed as text (a form field, a metadata item): ASCII digits, or an int."""
    if text is None or isinstance(text, int):
        return clean_ttl(text, field=field)
    # isascii too: "²".isdigit() and "٣".isdecimal() are both true.
    if not isinstance(text, str) or not (text.isascii() and text.isdecimal()):
        raise ValidationFailed(
            "ttl must be a whole number of seconds, in decimal digits.", field=field
        )
    return clean_ttl(int(text) if len(text) <= 20 else INT64_MAX + 1, field=field)


def clean_metadata_ttl(text: Any, *, field: str = "metadata.ttl") -> int:
    """Return the TTL a metadata "ttl" item (text, as all metadata) sets: ASCII digits only."""
    if not isinstance(text, str):
        raise ValidationFailed("A metadata ttl must be text of decimal digits.", field=field)
    return clean_ttl_text(text, field=field)


def clean_source(source: Any) -> str:
    if (
        not isinstance(source, str)
        or len(source) > settings.STATE_MAX_SOURCE_LENGTH
        or not storable_text(source)
    ):
        raise ValidationFailed(
            f"source must be a string of at most {settings.STATE_MAX_SOURCE_LENGTH} characters.",
            field="source",
        )
    return source


def clean_version(version: Any, *, field: str = "expected_version") -> int | None:
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValidationFailed(f"{field} must be a whole number >= 0.", field=field)
    return version


def clean_int(number: Any, *, field: str) -> int:
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValidationFailed(f"{field} must be an integer.", field=field)
    if not INT64_MIN <= number <= INT64_MAX:
        raise ValidationFailed(f"{field} must fit in a signed 64-bit integer.", field=field)
    return number


def json_equal(a: Any, b: Any) -> bool:
    """Compare two JSON values as JSON (true is not 1; 1 equals 1.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def clean_label(label: Any) -> str:
    if not isinstance(label, str) or len(label) > 128:
        raise ValidationFailed("label must be a string of at most 128 characters.", field="label")
    return label
