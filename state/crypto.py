"""Encryption at rest: the one module that seals and unseals values (Fernet through MultiFernet).

A value under one of `STATE_ENCRYPTED_PREFIXES` is stored as `{"$fernet": "<token>"}`: a
Fernet token (AES-128-CBC + HMAC-SHA256, from `cryptography`) of `<key> NUL <compact JSON>`.
The key is inside the token so a sealed value only opens under its own key: a ciphertext
copied onto another key in the database is refused, not served to that key's readers.

Where it is called (the storage boundary), and nowhere else:
- written: `seal_text()` where the write path encodes a value (`SetOp`/`CasOp.clean`, before
  any lock, and `IncrOp`); event rows take the same stored text, and removals and expiry copy
  it from the entry, never decrypt. A restore keeps a snapshot's sealed values
  (`for_restore`, which checks they open); `rotated()` re-seals for `rotate_keys`.
- read: `unseal()` where a stored value is decoded: the write path's `Row.value` (so CAS
  compares and incr adds plain values, and error details show them) and the selectors that
  hand out entries and events (`entry_get`, `entries_get_many`, `entries_list`,
  `key_history`, `events_after`, which feeds the stream's frames).
So every entry or event a service or selector returns holds the plain value, exactly once
decrypted, and the interfaces (API, stream, which check access first) never see ciphertext.
The raw stored form is only in the database, in snapshot files (the dump copies the column
text) and in `rotate_keys`. Keys, metadata, versions and sizes are not encrypted.
"""

import functools
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from . import rules
from .exceptions import EncryptionError

MARK = "$fernet"
# Event ops whose old/new values are entry values (a metadata event holds metadata maps).
VALUE_OPS = frozenset({"set", "delete", "expire"})
_SEP = b"\x00"  # never in a key (key syntax), so the first NUL ends the key


def encrypted(key: str) -> bool:
    """Whether values of `key` are encrypted at rest."""
    prefixes = settings.STATE_ENCRYPTED_PREFIXES
    return bool(prefixes) and key.startswith(tuple(prefixes))


def is_sealed(stored: Any) -> bool:
    """Whether a stored JSON value is in the sealed form."""
    return isinstance(stored, dict) and len(stored) == 1 and isinstance(stored.get(MARK), str)


@functools.lru_cache(maxsize=8)
def _fernets(keys: tuple[str, ...]) -> tuple[MultiFernet, Fernet]:
    fernets = [Fernet(key) for key in keys]
    return MultiFernet(fernets), fernets[0]


def _keys() -> tuple[MultiFernet, Fernet]:
    keys = tuple(settings.STATE_ENCRYPTION_KEYS)
    if not keys:
        raise EncryptionError(
            "STATE_ENCRYPTION_KEYS is empty, so encrypted values cannot be read or written."
        )
    return _fernets(keys)


def seal_text(key: str, text: str | None) -> str | None:
    """Return the stored JSON text for a value's JSON `text` under `key` (sealed if encrypted)."""
    if text is None or not encrypted(key):
        return text
    multi, _ = _keys()
    token = multi.encrypt(key.encode() + _SEP + text.encode()).decode()
    return rules.encode_value({MARK: token})


def seal(key: str, value: Any) -> Any:
    """Return the stored form of `value` under `key`: sealed if the key is encrypted."""
    if value is None or not encrypted(key):
        return value
    return json.loads(seal_text(key, rules.encode_value(value)))  # type: ignore[arg-type]


def _open(key: str, stored: dict[str, str]) -> Any:
    multi, _ = _keys()
    try:
        plaintext = multi.decrypt(stored[MARK].encode())
    except InvalidToken as exc:
        raise EncryptionError(
            f"The value of '{key}' cannot be decrypted with any key in STATE_ENCRYPTION_KEYS "
            "(was the key it was sealed with dropped?).",
            key=key,
        ) from exc
    sealed_for, _, text = plaintext.partition(_SEP)
    if sealed_for != key.encode():
        raise EncryptionError(f"The stored value of '{key}' was sealed for another key.", key=key)
    return json.loads(text)


def unseal(key: str, stored: Any) -> Any:
    """Return the plain value of a stored value (sealed or not) under `key`."""
    if not is_sealed(stored):
        return stored
    try:
        return _open(key, stored)
    except EncryptionError:
        if encrypted(key):
            raise
        return stored  # outside the encrypted prefixes: a user's value shaped like ours


def unseal_event(key: str, op: str, old_value: Any, new_value: Any) -> tuple[Any, Any]:
    """Return an event row's (old, new) values in plain form."""
    if op not in VALUE_OPS:
        return old_value, new_value
    return unseal(key, old_value), unseal(key, new_value)


def for_restore(key: str, value: Any) -> tuple[Any, Any]:
    """Return (stored, plain) for a snapshot's value: sealed values must open here.

    A sealed value is kept as it is (the file never held plain text, neither does the
    store); a plain value under an encrypted prefix (a snapshot taken before the prefix
    was) is sealed now.
    """
    if is_sealed(value):
        try:
            return value, _open(key, value)
        except EncryptionError:
            if encrypted(key):
                raise
    return seal(key, value), value


# --- rotation -----------------------------------------------------------------------------


def rotated(key: str, stored: Any) -> Any | None:
    """Return `stored` re-sealed with the newest key, or None when nothing needs doing.

    Sealed values not under the newest key are rotated (`MultiFernet.rotate`: decrypted
    with whichever key opens them, encrypted with the first); plain values under an
    encrypted prefix (written before the prefix was) are sealed. Others are left alone.
    """
    if not stale(key, stored):
        return None
    if not is_sealed(stored):
        return seal(key, stored)
    _open(key, stored)  # refuse what no key opens, or what was sealed for another key
    multi, _ = _keys()
    return {MARK: multi.rotate(stored[MARK].encode()).decode()}


def stale(key: str, stored: Any) -> bool:
    """Whether `rotated` would rewrite `stored` (plain under an encrypted prefix, or older key)."""
    if stored is None:
        return False
    if not is_sealed(stored):
        return encrypted(key)
    _, newest = _keys()
    try:
        newest.decrypt(stored[MARK].encode())
        return False
    except InvalidToken:
        return True


# --- configuration ------------------------------------------------------------------------


def check_configuration() -> None:
    """Refuse to start with encrypted prefixes but missing or malformed keys."""
    prefixes = settings.STATE_ENCRYPTED_PREFIXES
    keys = settings.STATE_ENCRYPTION_KEYS
    for prefix in prefixes:
        if not rules.KEY_PATTERN.fullmatch(prefix):
            raise ImproperlyConfigured(
                f"STATE_ENCRYPTED_PREFIXES: {prefix!r} is not the start of a valid key."
            )
    if prefixes and not keys:
        raise ImproperlyConfigured(
            f"STATE_ENCRYPTED_PREFIXES is set ({','.join(prefixes)}) but STATE_ENCRYPTION_KEYS "
            "is empty. Generate a key with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        )
    for position, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            # Never echo the key itself: this message goes to logs.
            raise ImproperlyConfigured(
                f"STATE_ENCRYPTION_KEYS: key {position} of {len(keys)} is not a Fernet key "
                "(32 bytes, url-safe base64: 44 characters ending in '=')."
            ) from None
    if len(set(keys)) != len(keys):
        raise ImproperlyConfigured("STATE_ENCRYPTION_KEYS lists the same key twice.")
