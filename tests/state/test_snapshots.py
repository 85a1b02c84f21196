"""Snapshots: the file format, create and restore through the services and the API."""

import gzip
import hashlib
import io
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from state import selectors, services, snapshots
from state.exceptions import InvalidSnapshot, NotFound
from state.models import Snapshot, StateEntry, StateEvent

API = "/api/v1/state"
pytestmark = pytest.mark.usefixtures("snapshot_dir")
FIELDS = ["key", "value", "metadata", "version", "created_at", "updated_at", "expires_at", "source"]


# --- helpers ------------------------------------------------------------------------------


def store() -> list[dict]:
    """Every entry, every field a snapshot must carry, in key order."""
    return list(StateEntry.objects.order_by("key").values(*FIELDS))


def fill_store() -> None:
    services.state_set(key="global:flags", value={"dark": True, "n": [1, 2.5, None]})
    services.state_set(key="user:alice", value="héllo ✓", metadata={"owner": "alice"}, ttl=3600)
    services.state_set(key="market:1", value=[{"odds": 1.25}], metadata={"ttl": "600"})
    services.state_set(key="counter", value=0)
    services.state_incr(key="counter", by=41)
    services.state_set(key="empty", value={}, source="seed")


def write_file(entries: list[snapshots.Entry], *, revision: int = 7) -> bytes:
    buffer = io.BytesIO()
    writer = snapshots.Writer(
        buffer, revision=revision, created_at=datetime.now(UTC), key_count=len(entries)
    )
    for entry in entries:
        writer.write(entry)
    writer.close()
    return buffer.getvalue()


def entry(key: str, value, **extra) -> snapshots.Entry:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    fields = dict(metadata={}, version=1, revision=1, created_at=now, updated_at=now,
                  expires_at=None, source="")  # fmt: skip
    return snapshots.Entry(key=key, value=value, **{**fields, **extra})


def gzipped(*lines: dict | bytes) -> bytes:
    raw = b"".join(
        line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n" for line in lines
    )
    return gzip.compress(raw)


def flip_byte(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1 :]


def bad_files() -> dict[str, bytes]:
    """One of each kind of file a restore must refuse."""
    good = write_file([entry(f"k{i:03}", {"i": i, "pad": "x" * 50}) for i in range(200)])
    header = {"format": "statehub-snapshot", "version": 1, "revision": 1,
              "created_at": "2030-01-01T00:00:00+00:00", "key_count": 0}  # fmt: skip
    raw = gzip.decompress(good)
    tampered_value = raw.replace(b'"i":5,', b'"i":6,', 1)  # valid gzip, valid JSON, wrong content
    return {
        "flipped byte": flip_byte(good, len(good) // 2),
        "truncated": good[: len(good) // 2],
        "truncated at a line end": gzip.compress(raw[: raw.index(b"\n", len(raw) // 2) + 1]),
        "tampered content": gzip.compress(tampered_value),
        "not gzip": b"key,value\nk1,1\n" * 10,
        "foreign gzip": gzipped({"hello": "world"}, {"end": True}),
        "random gzip": gzip.compress(os.urandom(4096)),
        "empty": b"",
        "future version": gzipped(
            {**header, "version": snapshots.VERSION + 1},
            {"end": True, "key_count": 0, "total_size": 0},
        ),  # fmt: skip
        "entry breaking the rules": write_file([entry("bad key!", 1)]),
        "null value": write_file([entry("k", None)]),
    }


# --- the file format ----------------------------------------------------------------------


def test_file_round_trips_every_field_in_key_order():
    written = [
        entry("a", {"nested": [1, {"x": None}]}, metadata={"m": "1"}, version=4),
        entry("b", "ünïcode", expires_at=datetime(2031, 1, 1, tzinfo=UTC), source="api"),
        entry("c", 3.5, revision=9),
    ]
    data = write_file(written, revision=42)
    reader = snapshots.Reader(io.BytesIO(data))
    assert (reader.header.revision, reader.header.key_count, reader.header.version) == (42, 3, 1)
    assert list(reader.entries()) == written
    assert reader.checksum.startswith("sha256:") and reader.compressed_size == len(data)


def test_file_is_gzipped_json_lines_with_header_and_trailer():
    lines = gzip.decompress(write_file([entry("a", 1)], revision=3)).splitlines()
    header, body, trailer = (json.loads(line) for line in lines)
    assert header["format"] == "statehub-snapshot" and header["version"] == 1
    assert header["revision"] == 3 and header["key_count"] == 1 and "created_at" in header
    assert body["key"] == "a" and body["value"] == 1
    assert trailer["end"] is True and trailer["key_count"] == 1 and trailer["total_size"] == 1
    assert trailer["checksum"].startswith("sha256:")


@pytest.mark.parametrize("kind", ["flipped byte", "truncated", "truncated at a line end",
                                  "tampered content", "not gzip", "foreign gzip", "random gzip",
                                  "empty", "future version"])  # fmt: skip
def test_reader_refuses_bad_files(kind):
    with pytest.raises(InvalidSnapshot):
        reader = snapshots.Reader(io.BytesIO(bad_files()[kind]))
        list(reader.entries())


def test_reader_names_the_future_version_it_cannot_read():
    with pytest.raises(InvalidSnapshot, match="format version 2.*Upgrade"):
        snapshots.Reader(io.BytesIO(bad_files()["future version"]))


def test_reader_refuses_a_file_not_matching_its_recorded_checksum():
    data = write_file([entry("a", 1)])
    reader = snapshots.Reader(io.BytesIO(data), expected_checksum="sha256:" + "0" * 64)
    with pytest.raises(InvalidSnapshot, match="recorded checksum"):
        list(reader.entries())


# --- create and restore -------------------------------------------------------------------


def test_snapshot_records_what_it_captured(db, snapshot_dir):
    fill_store()
    snap = services.snapshot_create(label="nightly", actor="ops")
    assert (snap.label, snap.created_by, snap.key_count) == ("nightly", "ops", 5)
    assert snap.revision == selectors.store_revision()
    assert snap.total_size == sum(StateEntry.objects.values_list("size", flat=True))
    stored = snapshot_dir / snap.file.name
    assert snap.compressed_size == stored.stat().st_size
    assert snap.checksum == snapshots.file_checksum(stored.open("rb"))


def test_snapshot_leaves_out_expired_entries(db, time_machine):
    services.state_set(key="soon", value=1, ttl=5)
    services.state_set(key="stays", value=2)
    time_machine.move_to(datetime.now(UTC) + timedelta(seconds=10))
    snap = services.snapshot_create()
    assert snap.key_count == 1


def test_restore_brings_back_exactly_the_snapshot(db, doorbells):
    fill_store()
    before = store()
    snap = services.snapshot_create()
    services.state_set(key="global:flags", value="changed")
    services.state_delete(key="counter")
    services.state_set(key="new:key", value=1)
    services.state_set_metadata(key="user:alice", metadata={"other": "x"})
    revision_before = selectors.store_revision()

    result = services.state_restore(snapshot_id=snap.pk, actor="ops")

    assert store() == before
    assert result.revision == revision_before + 1 == selectors.store_revision()
    assert set(StateEntry.objects.values_list("revision", flat=True)) == {result.revision}
    assert (result.key_count, result.snapshot_revision) == (5, snap.revision)
    event = StateEvent.objects.get(revision=result.revision)
    assert (event.op, event.key, event.actor, event.version) == ("restore", "", "ops", 0)
    assert event.new_value == {"snapshot_id": snap.pk, "key_count": 5}
    assert list(doorbells)[-1] == result.revision


def test_restore_of_an_empty_snapshot_empties_the_store(db):
    snap = services.snapshot_create()
    fill_store()
    services.state_restore(snapshot_id=snap.pk)
    assert store() == []


def test_restore_from_an_exported_file(db, tmp_path):
    fill_store()
    before = store()
    path = tmp_path / "export.jsonl.gz"
    with path.open("wb") as target:
        header, written = selectors.snapshot_dump(target=target)
    StateEntry.objects.all().delete()  # the store lost everything
    result = services.state_restore(path=path)
    assert store() == before
    assert (result.snapshot_id, result.key_count, result.checksum) == (None, 5, written.checksum)


def test_dry_run_verifies_and_changes_nothing(db):
    fill_store()
    snap = services.snapshot_create()
    services.state_delete(key="counter")
    before, revision = store(), selectors.store_revision()
    result = services.state_restore(snapshot_id=snap.pk, dry_run=True)
    assert (result.dry_run, result.revision, result.key_count) == (True, None, 5)
    assert store() == before and selectors.store_revision() == revision


@pytest.mark.parametrize("kind", list(bad_files()))
def test_restore_refuses_bad_files_and_leaves_the_store_untouched(db, tmp_path, kind):
    fill_store()
    before, revision, log = store(), selectors.store_revision(), StateEvent.objects.count()
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(bad_files()[kind])
    with pytest.raises(InvalidSnapshot):
        services.state_restore(path=path)
    assert store() == before
    assert selectors.store_revision() == revision and StateEvent.objects.count() == log


@pytest.mark.parametrize("kind", list(bad_files()))
def test_restore_of_a_recorded_bad_file_rolls_back_and_leaves_the_store_untouched(
    db, snapshot_dir, kind
):
    """A bad file whose record matches it: refused inside the restore's own transaction."""
    fill_store()
    snap = services.snapshot_create()
    data = bad_files()[kind]
    (snapshot_dir / snap.file.name).write_bytes(data)
    Snapshot.objects.filter(pk=snap.pk).update(
        revision=7, checksum="sha256:" + hashlib.sha256(data).hexdigest()
    )
    before, revision, log = store(), selectors.store_revision(), StateEvent.objects.count()
    with pytest.raises(InvalidSnapshot):
        services.state_restore(snapshot_id=snap.pk)
    assert store() == before
    assert selectors.store_revision() == revision and StateEvent.objects.count() == log


def test_restore_refuses_a_stored_file_that_changed_since_it_was_recorded(db, snapshot_dir):
    fill_store()
    snap = services.snapshot_create()
    stored = snapshot_dir / snap.file.name
    # A different but internally valid snapshot file in its place.
    stored.write_bytes(write_file([entry("a", 1)], revision=snap.revision))
    services.state_delete(key="counter")
    before = store()
    with pytest.raises(InvalidSnapshot, match="recorded checksum"):
        services.state_restore(snapshot_id=snap.pk)
    assert store() == before


def test_restore_refuses_a_missing_file_and_unknown_snapshot(db, snapshot_dir):
    snap = services.snapshot_create()
    (snapshot_dir / snap.file.name).unlink()
    with pytest.raises(InvalidSnapshot, match="missing"):
        services.state_restore(snapshot_id=snap.pk)
    with pytest.raises(NotFound):
        services.state_restore(snapshot_id=snap.pk + 1)


def test_snapshots_beyond_the_maximum_are_pruned_with_their_files(
    db, settings, snapshot_dir, django_capture_on_commit_callbacks
):
    settings.STATE_MAX_SNAPSHOTS = 2
    taken = []
    for number in range(4):
        services.state_set(key="n", value=number)
        with django_capture_on_commit_callbacks(execute=True):  # files go once the rows have
            taken.append(services.snapshot_create())
    assert list(selectors.snapshots_list()) == [taken[3], taken[2]]
    assert sorted(p.name for p in snapshot_dir.iterdir()) == sorted(s.file.name for s in taken[2:])


def test_snapshot_delete_removes_record_and_file(
    db, snapshot_dir, django_capture_on_commit_callbacks
):
    snap = services.snapshot_create()
    with django_capture_on_commit_callbacks(execute=True):
        services.snapshot_delete(snapshot_id=snap.pk)
    assert not Snapshot.objects.exists() and not any(snapshot_dir.iterdir())
    with pytest.raises(NotFound):
        services.snapshot_delete(snapshot_id=snap.pk)


def test_stats_count_snapshots(db):
    assert selectors.store_stats()["snapshots"] == 0
    assert selectors.store_stats()["last_snapshot_at"] is None
    snap = services.snapshot_create()
    stats = selectors.store_stats()
    assert (stats["snapshots"], stats["last_snapshot_at"]) == (1, snap.created_at)


def test_memory_stays_bounded_by_pages(db):
    """The dump reads one page at a time: never more rows than the page size per query."""
    for number in range(25):
        services.state_set(key=f"k{number:02}", value=number)
    pages = []
    buffer = io.BytesIO()
    selectors.snapshot_dump(target=buffer, batch_size=10, progress=lambda d, t: pages.append(d))
    assert pages == [10, 20, 25]
    assert [e.key for e in snapshots.Reader(io.BytesIO(buffer.getvalue())).entries()] == [
        f"k{n:02}" for n in range(25)
    ]


# --- consistency under concurrent writes --------------------------------------------------


def replay_log(up_to: int) -> dict[str, object]:
    """Rebuild the store's values at revision `up_to` from the event log."""
    state: dict[str, object] = {}
    for event in StateEvent.objects.filter(revision__lte=up_to).order_by("revision"):
        if event.op == "set":
            state[event.key] = event.new_value
        elif event.op in ("delete", "expire"):
            state.pop(event.key, None)
    return state


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_snapshot_taken_during_writes_equals_the_store_at_its_revision(shared_db):
    for number in range(300):
        services.state_set(key=f"k{number:03}", value={"n": number, "pad": "x" * 200})
    stop = threading.Event()
    writes = [0, 0]
    errors: list[BaseException] = []

    def writer(slot: int) -> None:
        try:
            while not stop.is_set():
                key = f"k{(2 * writes[slot] + slot) % 300:03}"  # each writer its own keys
                if writes[slot] % 7 == 0 and StateEntry.objects.filter(key=key).exists():
                    services.state_delete(key=key)
                else:
                    services.state_set(key=key, value={"writer": slot, "n": writes[slot]})
                writes[slot] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    while sum(writes) < 20 and not errors:
        threading.Event().wait(0.01)
    buffer = io.BytesIO()
    before_dump = sum(writes)
    # Many pages, with a pause after each that lets the writers in between reads.
    header, _ = selectors.snapshot_dump(
        target=buffer, batch_size=20, progress=lambda done, total: time.sleep(0.005)
    )
    after_dump = sum(writes)
    stop.set()
    for thread in threads:
        thread.join()

    assert not errors
    assert after_dump > before_dump  # writers were not held off while the snapshot ran
    assert selectors.store_revision() > header.revision  # and went on after the snapshot
    captured = {e.key: e.value for e in snapshots.Reader(io.BytesIO(buffer.getvalue())).entries()}
    assert captured == replay_log(header.revision)


# --- the API ------------------------------------------------------------------------------


def test_api_snapshot_round_trip(staff_client, doorbells):
    fill_store()
    before = store()
    response = staff_client.post(f"{API}/snapshot", {"label": "api"}, format="json")
    assert response.status_code == 201
    data = response.json()["data"]
    assert (data["label"], data["created_by"], data["key_count"]) == ("api", "staffer", 5)
    assert data["checksum"].startswith("sha256:") and data["revision"] == selectors.store_revision()
    services.state_delete(key="counter")
    services.state_set(key="global:flags", value=0)

    response = staff_client.post(f"{API}/snapshots/{data['id']}/restore", {}, format="json")

    assert response.status_code == 200
    result = response.json()["data"]
    assert (result["snapshot_id"], result["key_count"], result["dry_run"]) == (data["id"], 5, False)
    assert result["revision"] == selectors.store_revision()
    assert store() == before
    assert StateEvent.objects.get(revision=result["revision"]).actor == "staffer"
    assert list(doorbells)[-1] == result["revision"]


def test_api_post_snapshots_also_creates(staff_client):
    response = staff_client.post(f"{API}/snapshots", {}, format="json")
    assert response.status_code == 201 and Snapshot.objects.count() == 1


def test_api_lists_shows_and_deletes(staff_client):
    first = services.snapshot_create(label="one")
    services.state_set(key="a", value=1)
    second = services.snapshot_create(label="two")
    listed = staff_client.get(f"{API}/snapshots").json()["data"]["snapshots"]
    assert [s["id"] for s in listed] == [second.pk, first.pk]
    shown = staff_client.get(f"{API}/snapshots/{first.pk}").json()["data"]
    assert (shown["label"], shown["key_count"], shown["checksum"]) == ("one", 0, first.checksum)
    assert staff_client.delete(f"{API}/snapshots/{first.pk}").json()["data"] == {
        "id": first.pk, "deleted": True}  # fmt: skip
    assert staff_client.get(f"{API}/snapshots/{first.pk}").status_code == 404
    assert staff_client.delete(f"{API}/snapshots/{first.pk}").status_code == 404


def test_api_download_is_the_verified_file(staff_client, snapshot_dir):
    fill_store()
    snap = services.snapshot_create()
    response = staff_client.get(f"{API}/snapshots/{snap.pk}/download")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"
    assert "attachment" in response["Content-Disposition"]
    body = b"".join(response.streaming_content)
    assert body == (snapshot_dir / snap.file.name).read_bytes()
    assert response["X-Checksum-SHA256"] == snap.checksum.removeprefix("sha256:")
    assert len(list(snapshots.Reader(io.BytesIO(body)).entries())) == 5


def test_api_refuses_a_corrupt_stored_file_and_keeps_the_store(staff_client, snapshot_dir):
    fill_store()
    snap = services.snapshot_create()
    stored = snapshot_dir / snap.file.name
    stored.write_bytes(flip_byte(stored.read_bytes(), 40))
    services.state_delete(key="counter")
    before, revision = store(), selectors.store_revision()
    for method, path in [("post", "restore"), ("get", "download")]:
        response = getattr(staff_client, method)(f"{API}/snapshots/{snap.pk}/{path}")
        assert response.status_code == 400, path
        error = response.json()["error"]
        assert error["code"] == "validation_error" and "checksum" in error["message"]
    assert store() == before and selectors.store_revision() == revision


def test_api_dry_run_restore_changes_nothing(staff_client):
    snap = services.snapshot_create()
    services.state_set(key="a", value=1)
    response = staff_client.post(f"{API}/snapshots/{snap.pk}/restore", {"dry_run": True},
                                 format="json")  # fmt: skip
    assert response.status_code == 200 and response.json()["data"]["dry_run"] is True
    assert [e["key"] for e in store()] == ["a"]


SNAPSHOT_ENDPOINTS = [
    ("post", "/snapshot"), ("get", "/snapshots"), ("post", "/snapshots"),
    ("get", "/snapshots/{id}"), ("get", "/snapshots/{id}/download"),
    ("post", "/snapshots/{id}/restore"), ("delete", "/snapshots/{id}"),
]  # fmt: skip


@pytest.mark.parametrize("method,path", SNAPSHOT_ENDPOINTS)
def test_api_snapshot_endpoints_are_staff_only(user_client, writer_client, anon_client,
                                               method, path):  # fmt: skip
    snap = services.snapshot_create()
    services.state_set(key="team:x", value=1)
    url = API + path.format(id=snap.pk)
    for client, status in [(user_client, 403), (writer_client, 403), (anon_client, 401)]:
        response = getattr(client, method)(url, {}, format="json")
        assert response.status_code == status
        assert response.json()["success"] is False
    assert list(Snapshot.objects.all()) == [snap]
    assert [e["key"] for e in store()] == ["team:x"]
