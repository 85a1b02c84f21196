"""/metrics in one process: what each instrument counts, the store gauges, who may scrape."""

import sys
import types

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authtoken.models import Token

from config.asgi import application
from state import metrics, services
from state.worker import Job, Worker

URL = "/api/v1/state"


def scrape(client: Client | None = None, **headers) -> dict[tuple[str, tuple], float]:
    """Scrape /metrics; return {(sample name, sorted labels): value}."""
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_operations_are_counted_by_operation_and_outcome(staff_client):
    before = scrape()
    assert staff_client.get(f"{URL}/missing").status_code == 404
    assert staff_client.put(f"{URL}/k", {"value": 1}, format="json").status_code == 201
    assert staff_client.get(f"{URL}/k").status_code == 200
    assert staff_client.put(f"{URL}/k", {"value": 2, "expected_version": 7},
                            format="json").status_code == 409  # fmt: skip
    after = scrape()

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = "statehub_operations_total"
    assert delta(total, operation="get", outcome="not_found") == 1
    assert delta(total, operation="get", outcome="ok") == 1
    assert delta(total, operation="set", outcome="ok") == 1
    assert delta(total, operation="set", outcome="version_conflict") == 1
    histogram = "statehub_operation_duration_seconds"
    assert delta(f"{histogram}_count", operation="get", outcome="ok") == 1
    assert delta(f"{histogram}_bucket", operation="get", outcome="ok", le="+Inf") == 1
    assert delta(f"{histogram}_sum", operation="get", outcome="ok") > 0


def test_refused_requests_are_counted_with_their_error_code(user_client):
    before = scrape()
    assert user_client.get(f"{URL}/secret:x").status_code == 403
    assert Client().get(f"{URL}/global:x").status_code == 401
    after = scrape()
    for outcome in ("permission_denied", "unauthenticated"):
        labels = {"operation": "get", "outcome": outcome}
        assert value(after, "statehub_operations_total", **labels) == (
            value(before, "statehub_operations_total", **labels) + 1
        )


def test_store_gauges_are_read_from_the_database_at_scrape_time(db):
    services.state_set(key="a", value="xx")
    services.state_set(key="b", value=[1, 2, 3])
    services.state_delete(key="b")
    samples = scrape()
    assert value(samples, "statehub_store_up") == 1
    assert value(samples, "statehub_store_keys") == 1
    assert value(samples, "statehub_store_bytes") == len('"xx"')
    assert value(samples, "statehub_store_revision") == 3
    assert value(samples, "statehub_store_event_log_rows") == 3
    assert value(samples, "statehub_store_snapshots") == 0


def test_snapshot_durations_and_sizes_are_observed(db, snapshot_dir):
    services.state_set(key="a", value="x" * 1000)
    before = scrape()
    snapshot = services.snapshot_create(label="m")
    after = scrape()
    count, size = "statehub_snapshot_duration_seconds_count", "statehub_snapshot_size_bytes_sum"
    assert value(after, count) == value(before, count) + 1
    assert value(after, size) == value(before, size) + snapshot.compressed_size
    assert value(after, "statehub_store_snapshots") == 1


def test_worker_job_runs_and_failures_are_counted(db):
    def broken(should_stop):
        raise RuntimeError("boom")

    worker = Worker(
        jobs=[Job("m_broken", broken, lambda: 60), Job("m_fine", lambda stop: "done", lambda: 60)]
    )
    before = scrape()
    worker.run_due()
    after = scrape()
    runs = "statehub_worker_job_runs_total"
    for job, outcome in (("m_broken", "failed"), ("m_fine", "ok")):
        assert value(after, runs, job=job, outcome=outcome) == (
            value(before, runs, job=job, outcome=outcome) + 1
        )
    assert value(after, runs, job="m_fine", outcome="failed") == 0
    seconds = "statehub_worker_job_duration_seconds_count"
    assert value(after, seconds, job="m_fine") == value(before, seconds, job="m_fine") + 1


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_stream_subscribers_frames_and_lagged_cut_offs(user, settings):
    token = Token.objects.create(user=user).key

    async def scenario() -> tuple[dict, dict, dict]:
        communicator = WebsocketCommunicator(
            application, f"{URL}/events", headers=[(b"authorization", f"Bearer {token}".encode())]
        )
        assert (await communicator.connect())[0]
        assert (await communicator.receive_json_from(timeout=3))["type"] == "subscribed"
        connected = await database_sync_to_async(scrape)()
        settings.STATE_STREAM_QUEUE_SIZE = 2
        await database_sync_to_async(services.state_bulk)(
            operations=[{"op": "set", "key": f"global:{i}", "value": i} for i in range(6)]
        )
        lagged = await communicator.receive_json_from(timeout=3)
        assert lagged["data"]["code"] == "lagged"
        await communicator.disconnect()
        return connected, lagged, await database_sync_to_async(scrape)()

    before = scrape()
    connected, _, after = async_to_sync(scenario)()
    assert value(connected, "statehub_stream_subscribers") == 1
    assert value(after, "statehub_stream_subscribers") == 0
    assert value(after, "statehub_stream_lagged_total") == (
        value(before, "statehub_stream_lagged_total") + 1
    )
    # `subscribed` and the `lagged` error, at least.
    frames = "statehub_stream_frames_sent_total"
    assert value(after, frames) >= value(before, frames) + 2


def test_tracking_counters_are_copied_in_as_deltas(monkeypatch):
    counts = {"dropped": 3, "written": 10}
    stand_in = types.ModuleType("sessions_tracking.services")
    stand_in.stats = lambda: dict(counts)
    # The tracking service ships separately; until it lands this stands in for its stats().
    monkeypatch.setitem(sys.modules, "sessions_tracking.services", stand_in)
    monkeypatch.setattr(metrics, "_tracking_seen", {})

    def total(name: str) -> float:
        return REGISTRY.get_sample_value("statehub_tracking_total", {"counter": name}) or 0.0

    before = {name: total(name) for name in counts}
    metrics._sync_tracking(force=True)
    counts["dropped"] = 5
    metrics._sync_tracking(force=True)
    metrics._sync_tracking(force=True)  # nothing new: nothing added
    assert total("dropped") == before["dropped"] + 5
    assert total("written") == before["written"] + 10


def test_without_the_tracking_service_metrics_still_answer(db, monkeypatch):
    monkeypatch.setitem(sys.modules, "sessions_tracking.services", None)  # import fails
    metrics._sync_tracking(force=True)
    assert value(scrape(), "statehub_store_up") == 1


# --- access -------------------------------------------------------------------------------


def test_metrics_are_open_to_loopback_clients_only_by_default(db):
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    refused = Client(REMOTE_ADDR="10.1.2.3").get("/metrics")
    assert refused.status_code == 403 and b"STATE_METRICS_TOKEN" in refused.content


def test_with_a_token_every_client_must_send_it(db, settings):
    settings.STATE_METRICS_TOKEN = "metrics-token-for-tests-0123456789"
    local = Client()
    assert local.get("/metrics").status_code == 401  # loopback too: a proxy looks local
    assert local.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    remote = Client(REMOTE_ADDR="10.1.2.3")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {settings.STATE_METRICS_TOKEN}"}
    assert remote.get("/metrics", **auth).status_code == 200
