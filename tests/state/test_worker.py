"""The worker: expiry, periodic snapshots, compaction, leases between workers, signals."""

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import connection
from rest_framework.authtoken.models import Token

from state import selectors, services
from state.models import Snapshot, StateEntry, StateEvent, WorkerJob
from state.worker import JOBS, Job, Worker

pytestmark = pytest.mark.usefixtures("snapshot_dir")


def jobs(*names: str) -> list[Job]:
    return [job for job in JOBS if job.name in names]


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def expire_events() -> list[str]:
    return list(StateEvent.objects.filter(op="expire").values_list("key", flat=True))


# --- expiry -------------------------------------------------------------------------------


def test_worker_expires_due_keys_one_event_each_in_batches(db, settings, time_machine):
    settings.STATE_EXPIRE_BATCH_SIZE = 3
    for number in range(10):
        services.state_set(key=f"t{number}", value=number, ttl=5)
    services.state_set(key="forever", value=1)
    time_machine.move_to(later(10))
    [run] = Worker(jobs=jobs("expire")).run_due()
    assert run.result == "expired 10 keys"
    assert sorted(expire_events()) == [f"t{n}" for n in range(10)]
    assert list(StateEntry.objects.values_list("key", flat=True)) == ["forever"]


def test_expiry_runs_again_only_after_its_interval(db, settings, time_machine):
    settings.STATE_EXPIRE_INTERVAL_SECS = 30
    worker = Worker(jobs=jobs("expire"))
    assert len(worker.run_due()) == 1
    assert worker.run_due() == []
    time_machine.move_to(later(31))
    assert len(worker.run_due()) == 1


# --- periodic snapshots -------------------------------------------------------------------


def test_periodic_snapshot_once_per_interval(db, settings, time_machine):
    settings.STATE_SNAPSHOT_INTERVAL_SECS = 300
    worker = Worker(jobs=jobs("snapshot"))
    services.state_set(key="a", value=1)
    worker.run_due()
    services.state_set(key="a", value=2)
    worker.run_due()  # not due yet
    assert Snapshot.objects.count() == 1
    time_machine.move_to(later(301))
    [run] = worker.run_due()
    assert run.result.startswith("snapshot ") and Snapshot.objects.count() == 2
    assert Snapshot.objects.first().label == "periodic"
    assert Snapshot.objects.first().created_by == "worker"


def test_first_start_on_an_empty_store_takes_no_snapshot(db):
    [run] = Worker(jobs=jobs("snapshot")).run_due()
    assert run.result.startswith("nothing to snapshot") and Snapshot.objects.count() == 0


def test_a_shorter_interval_takes_effect_when_a_worker_restarts(db, settings, time_machine):
    """Due is decided from the last run and the interval now configured, not a stored time."""
    settings.STATE_SNAPSHOT_INTERVAL_SECS = 3600
    services.state_set(key="a", value=1)
    [run] = Worker(jobs=jobs("snapshot")).run_due()
    assert run.result.startswith("snapshot ")
    settings.STATE_SNAPSHOT_INTERVAL_SECS = 2
    services.state_set(key="a", value=2)
    time_machine.move_to(later(3))
    [run] = Worker(jobs=jobs("snapshot")).run_due()  # a restarted worker, new interval
    assert run.result.startswith("snapshot ") and Snapshot.objects.count() == 2


def test_periodic_snapshot_skips_an_unchanged_store(db, settings, time_machine):
    services.state_set(key="a", value=1)
    services.snapshot_create()
    [run] = Worker(jobs=jobs("snapshot")).run_due()
    assert run.result.startswith("unchanged") and Snapshot.objects.count() == 1


def test_periodic_snapshots_keep_at_most_the_maximum(db, settings, time_machine):
    settings.STATE_MAX_SNAPSHOTS = 2
    worker = Worker(jobs=jobs("snapshot"))
    for number in range(4):
        services.state_set(key="a", value=number)
        worker.run_due()
        time_machine.move_to(later(settings.STATE_SNAPSHOT_INTERVAL_SECS * (number + 1) + 1))
    assert Snapshot.objects.count() == 2


def test_no_periodic_snapshot_without_persistence(db, settings):
    settings.STATE_PERSISTENCE_ENABLED = False
    services.state_set(key="a", value=1)
    assert Worker(jobs=jobs("snapshot")).run_due() == []
    assert not Snapshot.objects.exists()


# --- compaction ---------------------------------------------------------------------------


def test_compaction_keeps_the_newest_events_by_count(db, settings):
    settings.STATE_EVENT_RETENTION_COUNT = 3
    for number in range(10):
        services.state_set(key="a", value=number)
    [run] = Worker(jobs=jobs("compact")).run_due()
    assert run.result == "removed 7 events"
    assert list(StateEvent.objects.values_list("revision", flat=True)) == [10, 9, 8]


def test_compaction_drops_events_older_than_the_retention_as_a_prefix(db, time_machine):
    for number in range(4):
        services.state_set(key="old", value=number)
    time_machine.move_to(later(3600))
    services.state_set(key="new", value=1)
    removed = services.events_compact(keep_count=1000, keep_secs=60, batch_size=2)
    assert removed == 4
    assert list(StateEvent.objects.values_list("revision", flat=True)) == [5]


# --- the loop -----------------------------------------------------------------------------


def test_a_failing_job_is_recorded_and_the_others_still_run(db):
    def broken(should_stop):
        raise RuntimeError("boom")

    ran = []

    def fine(should_stop):
        ran.append(True)
        return "ok"

    worker = Worker(jobs=[Job("broken", broken, lambda: 60), Job("fine", fine, lambda: 60)])
    runs = worker.run_due()
    assert [r.name for r in runs] == ["broken", "fine"] and len(ran) == 1
    row = WorkerJob.objects.get(name="broken")
    assert "RuntimeError: boom" in row.last_error and row.lease_until is None
    assert WorkerJob.objects.get(name="fine").last_error == ""


def test_a_leased_job_is_not_run_by_another_worker_until_the_lease_ends(db, time_machine):
    services.worker_jobs_register(names=["job"])
    assert services.worker_job_claim(name="job", owner="a", interval_secs=0, lease_secs=60)
    # Due again at once (interval 0), but still leased to "a", which may be mid-run.
    assert not services.worker_job_claim(name="job", owner="b", interval_secs=0, lease_secs=60)
    time_machine.move_to(later(61))  # "a" died: its lease ran out
    assert services.worker_job_claim(name="job", owner="b", interval_secs=0, lease_secs=60)


def test_a_worker_takes_back_a_lease_it_left_behind(db):
    # Its finish never reached the database (an outage): the lease is still its own.
    services.worker_jobs_register(names=["job"])
    assert services.worker_job_claim(name="job", owner="a", interval_secs=0, lease_secs=60)
    assert not services.worker_job_claim(name="job", owner="b", interval_secs=0, lease_secs=60)
    assert services.worker_job_claim(name="job", owner="a", interval_secs=0, lease_secs=60)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_workers_at_once_never_double_snapshot_or_double_expire(shared_db, settings):
    settings.STATE_EXPIRE_BATCH_SIZE = 7
    for number in range(40):
        services.state_set(key=f"t{number:02}", value=number, ttl=1)
    services.state_set(key="kept", value=1)
    time.sleep(1.1)
    barrier = threading.Barrier(2)
    runs: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        worker = Worker(jobs=jobs("expire", "snapshot", "compact"), name=f"w{slot}")
        try:
            for _ in range(5):
                barrier.wait(timeout=10)
                runs[slot] += [f"{r.name}: {r.result}" for r in worker.run_due()]
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert Snapshot.objects.count() == 1
    assert sorted(expire_events()) == [f"t{n:02}" for n in range(40)]  # each key exactly once
    snapshot_runs = [run for worker_runs in runs for run in worker_runs if run.startswith("snap")]
    assert len(snapshot_runs) == 1
    assert list(StateEntry.objects.values_list("key", flat=True)) == ["kept"]


def manage_env(database_url: str, snapshot_dir) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "STATE_SNAPSHOT_DIR": str(snapshot_dir),
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_worker_processes_take_one_snapshot(shared_db, snapshot_dir):
    services.state_set(key="a", value=1)
    command = [sys.executable, "manage.py", "state_worker", "--once"]
    env = manage_env(shared_db, snapshot_dir)
    processes = [
        subprocess.Popen(command, cwd=django_settings.BASE_DIR, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert Snapshot.objects.count() == 1
    assert sum(out.count("snapshot: snapshot") for out, _ in outputs) == 1


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_sigterm_stops_a_running_worker_within_seconds(shared_db, snapshot_dir):
    services.state_set(key="due", value=1, ttl=1)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "state_worker", "--tick", "0.2"],
        cwd=django_settings.BASE_DIR, env={**manage_env(shared_db, snapshot_dir),
                                           "LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert "running" in process.stdout.readline()
        deadline = time.monotonic() + 20
        while StateEntry.objects.filter(key="due").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert expire_events() == ["due"]  # the loop is doing its work
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert time.monotonic() - started < 5
        # Said once (the command's line and the worker's log line both said it before).
        rest = process.stdout.read()
        assert rest.count("stopped") == 1, rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- the worker's expiry reaches subscribers ----------------------------------------------


def async_test(test):
    @functools.wraps(test)
    def run(*args, **kwargs):
        return async_to_sync(test)(*args, **kwargs)

    return run


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@async_test
async def test_worker_expiry_reaches_a_subscriber(user):
    from config.asgi import application

    token = await database_sync_to_async(lambda: Token.objects.get_or_create(user=user)[0].key)()
    headers = [(b"authorization", f"Bearer {token}".encode())]
    communicator = WebsocketCommunicator(application, "/api/v1/state/events", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from(timeout=3))["type"] == "subscribed"
    entry, _ = await database_sync_to_async(services.state_set)(key="global:promo", value=1, ttl=1)
    first = await communicator.receive_json_from(timeout=3)
    assert (first["type"], first["data"]["op"]) == ("state_change", "set")
    await database_sync_to_async(time.sleep)(1.1)

    runs = await database_sync_to_async(Worker(jobs=jobs("expire")).run_due)()

    assert runs[0].result == "expired 1 keys"
    message = await communicator.receive_json_from(timeout=5)
    assert message["type"] == "state_change"
    data = message["data"]
    assert (data["op"], data["key"], data["old_value"], data["new_value"]) == (
        "expire", "global:promo", 1, None)  # fmt: skip
    assert data["revision"] == await database_sync_to_async(selectors.store_revision)()
    await communicator.disconnect()
