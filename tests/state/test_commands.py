"""manage.py snapshot and restore: summaries, confirmation, refusals and exit codes."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError

from state import selectors, services
from state.models import Snapshot, StateEvent
from tests.state.test_snapshots import bad_files, fill_store, store

pytestmark = pytest.mark.usefixtures("snapshot_dir")


def run(*args, stdin: str | None = None) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    options = {"stdout": out, "stderr": err}
    if stdin is not None:
        options["stdin"] = io.StringIO(stdin)
    call_command(*args, **options)
    return out.getvalue(), err.getvalue()


def test_snapshot_command_takes_a_snapshot_and_summarises(db):
    fill_store()
    out, err = run("snapshot", "--label", "before-upgrade")
    snap = Snapshot.objects.get()
    assert snap.label == "before-upgrade" and snap.created_by == "manage.py"
    assert f"keys: {snap.key_count}" in out and f"revision: {snap.revision}" in out
    assert snap.checksum in out and str(snap.compressed_size) in out
    assert "5/5 keys" in err  # the progress bar


def test_snapshot_list(db):
    assert "No snapshots." in run("snapshot", "--list")[0]
    services.snapshot_create(label="first")
    out, _ = run("snapshot", "--list")
    assert "first" in out and "revision" in out


def test_export_then_restore_file_round_trip(db, tmp_path):
    fill_store()
    before = store()
    path = tmp_path / "backup.jsonl.gz"
    out, _ = run("snapshot", "--output", str(path))
    assert not Snapshot.objects.exists()  # an export is not recorded
    assert "keys: 5" in out and path.stat().st_size > 0
    services.state_delete(key="counter")
    services.state_set(key="later", value=1)
    revision = selectors.store_revision()

    out, _ = run("restore", "--file", str(path), "--yes")

    assert store() == before
    assert "restored" in out and "keys: 5" in out and f"revision: {revision + 1}" in out
    assert StateEvent.objects.get(revision=revision + 1).op == "restore"


def test_restore_by_id_asks_and_goes_on_with_yes(db):
    fill_store()
    before = store()
    snap = services.snapshot_create()
    services.state_delete(key="counter")
    out, _ = run("restore", str(snap.pk), stdin="yes\n")
    assert "Type 'yes'" in out and store() == before


@pytest.mark.parametrize("answer", ["", "no\n", "y\n"])
def test_restore_without_confirmation_is_refused(db, answer):
    snap = services.snapshot_create()
    services.state_set(key="a", value=1)
    with pytest.raises(CommandError, match="not confirmed"):
        run("restore", str(snap.pk), stdin=answer)
    assert [e["key"] for e in store()] == ["a"]


def test_restore_dry_run_changes_nothing(db):
    snap = services.snapshot_create()
    services.state_set(key="a", value=1)
    out, _ = run("restore", str(snap.pk), "--dry-run")
    assert "dry run" in out and [e["key"] for e in store()] == ["a"]


@pytest.mark.parametrize("kind", ["flipped byte", "truncated", "not gzip", "future version"])
def test_restore_refuses_bad_files(db, tmp_path, kind):
    fill_store()
    before = store()
    path = tmp_path / "bad.gz"
    path.write_bytes(bad_files()[kind])
    with pytest.raises(CommandError, match="not a statehub snapshot|refused"):
        run("restore", "--file", str(path), "--yes")
    assert store() == before


def test_restore_needs_exactly_one_source(db, tmp_path):
    with pytest.raises(CommandError, match="either"):
        run("restore", "--yes")
    with pytest.raises(CommandError, match="either"):
        run("restore", "1", "--file", str(tmp_path / "x"), "--yes")
    with pytest.raises(CommandError, match="does not exist"):
        run("restore", "999", "--yes")


def manage(
    *args: str, database_url: str, snapshot_dir: Path, stdin: str = ""
) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url, "STATE_SNAPSHOT_DIR": str(snapshot_dir)}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=django_settings.BASE_DIR, env=env,
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_real_commands_exit_non_zero_on_refusal_and_zero_on_success(shared_db, snapshot_dir,
                                                                    tmp_path):  # fmt: skip
    fill_store()
    before = store()
    path = tmp_path / "good.jsonl.gz"
    assert manage("snapshot", "--output", str(path), database_url=shared_db,
                  snapshot_dir=snapshot_dir).returncode == 0  # fmt: skip
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(path.read_bytes()[:-20])
    refused = manage("restore", "--file", str(bad), "--yes", database_url=shared_db,
                     snapshot_dir=snapshot_dir)  # fmt: skip
    assert refused.returncode != 0 and "truncated" in refused.stderr
    unconfirmed = manage("restore", "--file", str(path), database_url=shared_db,
                         snapshot_dir=snapshot_dir)  # no stdin, as in CI  # fmt: skip
    assert unconfirmed.returncode != 0 and "not confirmed" in unconfirmed.stderr
    assert store() == before and not StateEvent.objects.filter(op="restore").exists()
    services.state_delete(key="counter")
    done = manage("restore", "--file", str(path), "--yes", database_url=shared_db,
                  snapshot_dir=snapshot_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert store() == before
