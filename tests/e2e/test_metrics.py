"""/metrics with several real processes sharing one PROMETHEUS_MULTIPROC_DIR."""

import http.client
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from .conftest import Server, _manage, daphne_servers

pytestmark = pytest.mark.e2e


def scrape(server: Server) -> dict[tuple[str, tuple], float]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        text = response.read().decode()
        assert response.status == 200, text
    finally:
        connection.close()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metrics_env(e2e_env, tmp_path) -> dict[str, str]:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    # No request tracking: its records, committed a moment after each request, change the key
    # count this test compares across scrapes.
    return {**e2e_env, "PROMETHEUS_MULTIPROC_DIR": str(directory), "STATE_TRACK_REQUESTS": "false"}


@pytest.fixture
def two_servers(metrics_env, tokens, tmp_path) -> Iterator[list[tuple[subprocess.Popen, Server]]]:
    with daphne_servers(metrics_env, 2, tmp_path) as started:
        yield started


def test_a_scrape_of_either_process_sums_both_and_the_worker(two_servers, tokens, metrics_env):
    (_, a), (process_b, b) = two_servers
    token = tokens["e2e-staff"]
    for _ in range(3):
        assert a.request("GET", "/api/v1/state/metrics:absent", token)[0] == 404
    for _ in range(5):
        assert b.request("GET", "/api/v1/state/metrics:absent", token)[0] == 404
    keys_before = value(scrape(a), "statehub_store_keys")  # the e2e database is shared
    b.put("metrics:present", 1, token)
    # The worker is a third process writing to the same directory.
    _manage(metrics_env, "state_worker", "--once", "--jobs", "expire")

    not_found = {"operation": "get", "outcome": "not_found"}
    for server in (a, b):
        samples = scrape(server)
        assert value(samples, "statehub_operations_total", **not_found) == 8
        assert value(samples, "statehub_operation_duration_seconds_count", **not_found) == 8
        assert value(samples, "statehub_operations_total", operation="set", outcome="ok") == 1
        assert value(samples, "statehub_worker_job_runs_total", job="expire", outcome="ok") == 1
        assert value(samples, "statehub_store_keys") == keys_before + 1

    # A subscriber on B is counted while B lives; B killed outright cannot say it left, and the
    # scrape drops its live gauge (mark_process_dead) but keeps what it counted.
    headers = {"Authorization": f"Bearer {token}"}
    with connect(b.ws, additional_headers=headers, open_timeout=5) as stream:
        stream.recv(timeout=5)  # subscribed
        assert value(scrape(a), "statehub_stream_subscribers") == 1
        process_b.send_signal(signal.SIGKILL)
        process_b.wait(timeout=10)
    samples = scrape(a)
    assert value(samples, "statehub_stream_subscribers") == 0
    assert value(samples, "statehub_operations_total", **not_found) == 8
    assert not list(Path(metrics_env["PROMETHEUS_MULTIPROC_DIR"]).glob(f"gauge_live*_{b.pid}.db"))
    assert os.path.exists(Path(metrics_env["PROMETHEUS_MULTIPROC_DIR"]) / f"counter_{b.pid}.db")
