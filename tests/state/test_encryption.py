"""Encryption at rest: raw rows, event log, snapshot files and logs hold no plain text.

Values under STATE_ENCRYPTED_PREFIXES are sealed (state/crypto.py); readers allowed to read
them get plain values through REST and the stream; rotate_keys moves everything to the
newest key so older ones can be dropped; bad key configuration stops start-up.
"""

import gzip
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from cryptography.fernet import Fernet, InvalidToken
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token

from state import crypto, selectors, services, stream
from state.exceptions import EncryptionError, InvalidSnapshot, ValueTooLarge
from state.models import Snapshot, StateEntry, StateEvent

URL = "/api/v1/state"
ROOT = Path(__file__).resolve().parents[2]
KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
PLAIN = "hunter2-plaintext-marker"  # appears in every secret value; must never be at rest


@pytest.fixture
def encrypted(settings):
    settings.STATE_ENCRYPTED_PREFIXES = ["secret:"]
    settings.STATE_ENCRYPTION_KEYS = [KEY_A]
    return settings


def raw_entries() -> dict[str, str]:
    """Every entry's value as the database's own JSON text, read with SQL (no ORM, no crypto)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT key, CAST(value AS TEXT) FROM state_stateentry")
        return dict(cursor.fetchall())


def raw_events() -> list[tuple[int, str, str, str | None, str | None]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT revision, key, op, CAST(old_value AS TEXT), CAST(new_value AS TEXT) "
            "FROM state_stateevent ORDER BY revision"
        )
        return cursor.fetchall()


def raw_text() -> str:
    return json.dumps([raw_entries(), raw_events()])


def raw_tokens() -> list[str]:
    """Every Fernet token in the raw entry and event rows."""
    texts = [*raw_entries().values()]
    texts += [text for row in raw_events() for text in row[3:] if text is not None]
    return [json.loads(text)[crypto.MARK] for text in texts if crypto.MARK in text]


def all_writes(key: str) -> None:
    """Every kind of change the store makes, each carrying PLAIN in the value."""
    services.state_set(key=key, value={"password": PLAIN, "n": 1})
    services.state_set(key=key, value={"password": PLAIN, "n": 2}, metadata={"owner": "ops"})
    services.state_cas(key=key, expected={"password": PLAIN, "n": 2}, new_value=[PLAIN, 3])
    services.state_bulk(
        operations=[
            {"op": "set", "key": f"{key}:bulk", "value": PLAIN},
            {"op": "cas", "key": key, "expected": [PLAIN, 3], "new_value": {"v": PLAIN}},
        ]
    )
    services.state_set_metadata(key=key, metadata={"owner": "sec"})
    services.state_delete(key=f"{key}:bulk")
    services.state_set(key=f"{key}:ttl", value=PLAIN, ttl=1)
    services.state_incr(key=f"{key}:count", by=5)
    services.state_incr(key=f"{key}:count", by=2)


def expire_now() -> int:
    with_now = timezone.now() + timedelta(seconds=5)
    StateEntry.objects.filter(expires_at__isnull=False).update(expires_at=with_now - timedelta(1))
    return services.state_expire_due()


# --- at rest -----------------------------------------------------------------------------


def test_no_plain_text_in_entry_rows_or_event_log(encrypted, db):
    all_writes("public:x")  # the control: the same writes, not encrypted
    all_writes("secret:x")
    assert expire_now() == 2
    entries, events = raw_entries(), raw_events()
    assert PLAIN in entries["public:x"]  # the check sees plain text where it is
    secret_rows = {k: v for k, v in entries.items() if k.startswith("secret:")}
    assert set(secret_rows) == {"secret:x", "secret:x:count"}
    for key, text in secret_rows.items():
        assert PLAIN not in text and "password" not in text
        assert crypto.is_sealed(json.loads(text)), key
    secret_events = [row for row in events if row[1].startswith("secret:")]
    ops = [row[2] for row in secret_events]
    assert ops.count("set") == 8 and {"delete", "expire", "metadata"} <= set(ops)
    for _revision, key, op, old, new in secret_events:
        for text in (old, new):
            assert text is None or PLAIN not in text
            if op != "metadata" and text is not None and text != "null":
                assert crypto.is_sealed(json.loads(text)), (key, op)
    # The incr counter is sealed too; its plain value is only what a reader is given.
    assert crypto.unseal("secret:x:count", json.loads(entries["secret:x:count"])) == 7
    assert "7" not in entries["secret:x:count"].split('"')[1]


def test_sql_logs_carry_ciphertext_not_plain_text(encrypted, db, caplog):
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    connection.force_debug_cursor = True
    try:
        services.state_set(key="secret:logged", value=PLAIN)
        services.state_set(key="public:logged", value="public-" + PLAIN)
    finally:
        connection.force_debug_cursor = False
    assert "public-" + PLAIN in caplog.text  # SQL parameters are in the log
    assert "gAAAAA" in caplog.text  # and so is the token written for the secret key
    # ...but the plain text only where the public value is.
    assert caplog.text.count(PLAIN) == caplog.text.count("public-" + PLAIN)


def test_a_sealed_value_only_opens_under_its_own_key(encrypted, staff_client):
    services.state_set(key="secret:a", value=PLAIN)
    services.state_set(key="secret:b", value="b")
    with connection.cursor() as cursor:  # an attacker with database access moves a ciphertext
        cursor.execute(
            "UPDATE state_stateentry SET value = (SELECT value FROM state_stateentry "
            "WHERE key = 'secret:a') WHERE key = 'secret:b'"
        )
    response = staff_client.get(f"{URL}/secret:b")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "encryption_error"
    assert PLAIN not in response.content.decode()


def test_size_limit_applies_to_the_plain_value(encrypted, db):
    encrypted.STATE_MAX_VALUE_BYTES = 1000
    value = "x" * 998  # 1000 bytes of JSON
    entry, _ = services.state_set(key="secret:big", value=value)
    stored = raw_entries()["secret:big"]
    assert entry.size == 1000 and len(stored) > 1000
    # Fernet: base64 of (57 + the plain text padded to 16) bytes, plain text = key NUL value.
    padded = (len("secret:big") + 1 + 1000) // 16 * 16 + 16
    assert len(json.loads(stored)[crypto.MARK]) == (57 + padded + 2) // 3 * 4 == 1444
    with pytest.raises(ValueTooLarge):
        services.state_set(key="secret:big", value=value + "x")


# --- allowed readers get plain values ------------------------------------------------------


def test_rest_gives_allowed_readers_plain_values(encrypted, staff_client, user_client):
    body = {"value": {"password": PLAIN}}
    created = staff_client.put(f"{URL}/secret:db", body, format="json")
    assert created.status_code == 201 and created.json()["data"]["value"] == {"password": PLAIN}
    assert staff_client.get(f"{URL}/secret:db").json()["data"]["value"] == {"password": PLAIN}
    mget = staff_client.post(f"{URL}/mget", {"keys": ["secret:db"]}, format="json").json()
    assert mget["data"]["entries"]["secret:db"]["value"] == {"password": PLAIN}
    listing = staff_client.get(f"{URL}/entries?prefix=secret:").json()["data"]["entries"]
    assert [e["value"] for e in listing] == [{"password": PLAIN}]
    # CAS by value compares plain values; a failed one shows the writer the plain value.
    failed = staff_client.post(
        f"{URL}/cas", {"key": "secret:db", "expected": {"password": "no"}, "new_value": 1},
        format="json",
    )  # fmt: skip
    assert failed.status_code == 409
    assert failed.json()["error"]["details"]["current"] == {"password": PLAIN}
    swapped = staff_client.post(
        f"{URL}/cas", {"key": "secret:db", "expected": {"password": PLAIN}, "new_value": 41},
        format="json",
    )  # fmt: skip
    assert swapped.json()["data"] == {"swapped": True, "version": 2}
    incr = staff_client.post(f"{URL}/incr", {"key": "secret:db"}, format="json")
    assert incr.json()["data"] == {"value": 42, "version": 3}
    history = staff_client.get(f"{URL}/secret:db/history").json()["data"]
    assert [(e["old_value"], e["new_value"]) for e in history["events"]] == [
        (41, 42), ({"password": PLAIN}, 41), (None, {"password": PLAIN}),
    ]  # fmt: skip
    # A caller who may not read the key gets nothing of it, decrypted or not.
    denied = user_client.get(f"{URL}/secret:db")
    assert denied.status_code == 403 and "gAAAA" not in denied.content.decode()
    listed = user_client.get(f"{URL}/entries").json()["data"]["entries"]
    assert all(not e["key"].startswith("secret:") for e in listed)


def test_stream_frames_and_replay_carry_plain_values(encrypted, db):
    services.state_set(key="secret:s", value=PLAIN)
    services.state_set(key="secret:s", value=[PLAIN])
    frames = stream.read_frames(after=0, limit=10)
    data = [json.loads(frame.text)["data"] for frame in frames]
    assert [(d["old_value"], d["new_value"]) for d in data] == [(None, PLAIN), (PLAIN, [PLAIN])]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_subscriber_allowed_to_read_gets_plain_values_live(encrypted, staff_user, user):
    staff_token = Token.objects.create(user=staff_user).key
    alice_token = Token.objects.create(user=user).key

    async def scenario():
        from config.asgi import application

        def connect(token):
            return WebsocketCommunicator(
                application, f"{URL}/events?prefixes=secret:&token={token}"
            )

        staff, alice = connect(staff_token), connect(alice_token)
        assert (await staff.connect())[0] and (await alice.connect())[0]
        assert (await staff.receive_json_from(timeout=3))["type"] == "subscribed"
        first = await alice.receive_json_from(timeout=3)
        assert first["type"] == "error" and first["data"]["code"] == "permission_denied"
        await database_sync_to_async(services.state_set)(key="secret:live", value=PLAIN)
        change = await staff.receive_json_from(timeout=5)
        while change["type"] == "progress":
            change = await staff.receive_json_from(timeout=5)
        assert change["type"] == "state_change"
        assert change["data"]["key"] == "secret:live" and change["data"]["new_value"] == PLAIN
        messages = []
        while not await alice.receive_nothing(timeout=0.5):
            messages.append(await alice.receive_json_from())
        assert all(PLAIN not in json.dumps(m) for m in messages)
        await staff.disconnect()
        await alice.disconnect()

    async_to_sync(scenario)()


# --- snapshots ----------------------------------------------------------------------------


def snapshot_text(snapshot: Snapshot) -> str:
    with selectors.snapshot_open(snapshot=snapshot) as stream_:
        return gzip.decompress(stream_.read()).decode()


def test_snapshot_file_holds_ciphertext_and_restore_keeps_it(encrypted, db, snapshot_dir):
    services.state_set(key="secret:snap", value={"password": PLAIN})
    services.state_set(key="public:snap", value="public-" + PLAIN)
    snapshot = services.snapshot_create()
    text = snapshot_text(snapshot)
    assert "public-" + PLAIN in text and text.count(PLAIN) == 1  # only the public one
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["key"] for line in lines if crypto.is_sealed(line.get("value"))] == ["secret:snap"]
    services.state_set(key="secret:snap", value="changed")
    services.state_restore(snapshot_id=snapshot.pk)
    stored = raw_entries()["secret:snap"]
    assert PLAIN not in stored and crypto.is_sealed(json.loads(stored))
    entry = selectors.entry_get(key="secret:snap")
    assert entry.value == {"password": PLAIN}
    assert entry.size == len(json.dumps({"password": PLAIN}, separators=(",", ":")))


def test_restore_where_the_key_is_missing_fails_clearly(encrypted, db, snapshot_dir):
    services.state_set(key="secret:snap", value=PLAIN)
    snapshot = services.snapshot_create()
    services.state_set(key="secret:snap", value="after")
    before = (raw_entries(), raw_events())
    encrypted.STATE_ENCRYPTION_KEYS = [KEY_B]  # KEY_A is not here
    for dry_run in (True, False):
        with pytest.raises(InvalidSnapshot, match="cannot be decrypted") as raised:
            services.state_restore(snapshot_id=snapshot.pk, dry_run=dry_run)
        assert "secret:snap" in raised.value.message
    assert (raw_entries(), raw_events()) == before


def test_restoring_a_plain_snapshot_seals_its_encrypted_keys(settings, db, snapshot_dir):
    services.state_set(key="secret:old", value=PLAIN)  # before encryption was turned on
    snapshot = services.snapshot_create()
    settings.STATE_ENCRYPTED_PREFIXES = ["secret:"]
    settings.STATE_ENCRYPTION_KEYS = [KEY_A]
    services.state_restore(snapshot_id=snapshot.pk)
    assert PLAIN not in raw_entries()["secret:old"]
    entry = selectors.entry_get(key="secret:old")
    assert entry.value == PLAIN


# --- rotation -----------------------------------------------------------------------------


def test_rotate_keys_reencrypts_everything_and_old_keys_can_be_dropped(encrypted, staff_client):
    all_writes("secret:r")
    expire_now()
    tokens_before = raw_tokens()
    assert tokens_before and all(Fernet(KEY_A).decrypt(t.encode()) for t in tokens_before)
    revision, event_count = selectors.store_revision(), StateEvent.objects.count()
    versions = dict(StateEntry.objects.values_list("key", "version"))

    encrypted.STATE_ENCRYPTION_KEYS = [KEY_B, KEY_A]  # prepend the new key
    assert services.values_stale() > 0
    with pytest.raises(CommandError, match="still need an older key"):
        call_command("rotate_keys", "--check", stdout=open(os.devnull, "w"))
    call_command("rotate_keys", "--batch-size", "2", stdout=open(os.devnull, "w"))

    tokens_after = raw_tokens()
    assert len(tokens_after) == len(tokens_before)
    for token in tokens_after:
        Fernet(KEY_B).decrypt(token.encode())
        with pytest.raises(InvalidToken):
            Fernet(KEY_A).decrypt(token.encode())
    assert PLAIN not in raw_text()
    # Not a change: same revision, no new event, same versions.
    assert selectors.store_revision() == revision
    assert StateEvent.objects.count() == event_count
    assert dict(StateEntry.objects.values_list("key", "version")) == versions
    call_command("rotate_keys", "--check", stdout=open(os.devnull, "w"))

    encrypted.STATE_ENCRYPTION_KEYS = [KEY_B]  # drop the old key
    assert staff_client.get(f"{URL}/secret:r").json()["data"]["value"] == {"v": PLAIN}
    history = staff_client.get(f"{URL}/secret:r/history?limit=100").json()["data"]["events"]
    assert [PLAIN, 3] in [e["new_value"] for e in history]
    frames = stream.read_frames(after=0, limit=100)
    assert sum(PLAIN in frame.text for frame in frames) >= 6


def test_rotate_keys_seals_values_written_before_their_prefix_was_encrypted(settings, db):
    services.state_set(key="secret:legacy", value=PLAIN)
    settings.STATE_ENCRYPTED_PREFIXES = ["secret:"]
    settings.STATE_ENCRYPTION_KEYS = [KEY_A]
    assert PLAIN in raw_text()
    assert services.values_stale() == 2  # the entry and its event
    result = services.values_reencrypt()
    assert (result.entries, result.events, result.remaining) == (1, 1, 0)
    assert PLAIN not in raw_text()
    entry = selectors.entry_get(key="secret:legacy")
    assert entry.value == PLAIN


def test_rotate_keys_refuses_without_encrypted_prefixes(db):
    with pytest.raises(CommandError, match="nothing is encrypted"):
        call_command("rotate_keys")


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefixes", "keys", "message"),
    [
        (["secret:"], [], "STATE_ENCRYPTION_KEYS is empty"),
        (["secret:"], [KEY_A, "not-a-key"], "key 2 of 2 is not a Fernet key"),
        (["secret:"], [KEY_A, KEY_A], "the same key twice"),
        (["bad prefix"], [KEY_A], "not the start of a valid key"),
        ([], ["not-a-key"], "key 1 of 1 is not a Fernet key"),
    ],
)
def test_bad_key_configuration_is_refused(settings, prefixes, keys, message):
    settings.STATE_ENCRYPTED_PREFIXES = prefixes
    settings.STATE_ENCRYPTION_KEYS = keys
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        crypto.check_configuration()
    assert "not-a-key" not in str(raised.value)  # never echo a key


def test_good_key_configuration_passes(encrypted):
    encrypted.STATE_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    crypto.check_configuration()


def test_start_up_stops_on_missing_keys_with_a_clear_message():
    env = {**os.environ, "STATE_ENCRYPTED_PREFIXES": "secret:", "STATE_ENCRYPTION_KEYS": ""}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "STATE_ENCRYPTED_PREFIXES is set (secret:) but STATE_ENCRYPTION_KEYS is empty" in (
        result.stderr
    )


def test_encryption_error_is_a_server_error_not_a_leak(encrypted, db):
    services.state_set(key="secret:k", value=PLAIN)
    encrypted.STATE_ENCRYPTION_KEYS = [KEY_B]
    entry = StateEntry.objects.get(key="secret:k")
    with pytest.raises(EncryptionError, match="cannot be decrypted") as raised:
        crypto.unseal(entry.key, entry.value)
    assert PLAIN not in raised.value.message


def test_a_plain_key_may_hold_a_value_shaped_like_a_sealed_one(encrypted, staff_client):
    lookalike = {"$fernet": "gAAAAAnot-a-token"}
    staff_client.put(f"{URL}/public:look", {"value": lookalike}, format="json")
    assert staff_client.get(f"{URL}/public:look").json()["data"]["value"] == lookalike
    encrypted.STATE_ENCRYPTION_KEYS = []  # nor does it need any key
    encrypted.STATE_ENCRYPTED_PREFIXES = []
    assert staff_client.get(f"{URL}/public:look").json()["data"]["value"] == lookalike
    # Under an encrypted prefix it is just a value like any other: sealed, and given back.
    encrypted.STATE_ENCRYPTED_PREFIXES = ["secret:"]
    encrypted.STATE_ENCRYPTION_KEYS = [KEY_A]
    staff_client.put(f"{URL}/secret:look", {"value": lookalike}, format="json")
    assert staff_client.get(f"{URL}/secret:look").json()["data"]["value"] == lookalike
    assert "not-a-token" not in raw_entries()["secret:look"]


def test_admin_edits_the_plain_value_of_an_encrypted_key(encrypted, client, db):
    from django.contrib.auth.models import User

    from tests.state.test_admin import change_url

    client.force_login(User.objects.create_superuser("root", password="pw-root-1"))
    services.state_set(key="secret:db", value={"password": "hunter2"})
    page = client.get(change_url("secret:db")).content.decode()
    assert "hunter2" in page and "$fernet" not in page
    entry = selectors.entry_get(key="secret:db")
    form = {"value_text": '{"password": "hunter3"}', "metadata_text": "{}", "ttl": "",
            "loaded_version": entry.version}  # fmt: skip
    assert client.post(change_url("secret:db"), form).status_code == 302
    assert selectors.entry_get(key="secret:db").value == {"password": "hunter3"}
    assert "hunter3" not in raw_entries()["secret:db"]
