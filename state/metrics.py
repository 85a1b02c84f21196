"""Prometheus metrics: every definition, the scrape-time store gauges, and the exposition.

Several server processes (and the worker) each count in their own memory; with
PROMETHEUS_MULTIPROC_DIR set (it must be set before this module is imported: the library
chooses its value class at import), prometheus-client's multiprocess mode keeps each
process's values in a file of that directory and a scrape of any process merges them all:
counters and histograms summed over every process that ever ran since the directory was
wiped (so a restarted worker does not reset a counter), the subscriber gauge summed over
live processes only. Without it, each process exposes its own values (one process: the test
suite, a shell).
"""

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# The library opens its files there as soon as a metric is defined (below); a process started
# before its supervisor made the directory (a manage.py command) must not crash on import.
if _multiproc_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(_multiproc_dir, exist_ok=True)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SNAPSHOT_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
SNAPSHOT_BYTES_BUCKETS = tuple(float(2**n) for n in range(10, 35, 2))  # 1 KiB .. 16 GiB

# --- the API (one observation a request, state/api/operations.py) -------------------------
OPERATIONS = Counter(
    "statehub_operations", "API requests by operation and outcome (ok or the error code).",
    ["operation", "outcome"],
)  # fmt: skip
OPERATION_SECONDS = Histogram(
    "statehub_operation_duration_seconds",
    "API request latency, from the view's dispatch to its response, by operation and outcome.",
    ["operation", "outcome"],
    buckets=LATENCY_BUCKETS,
)

# --- the event stream (state/stream.py) ----------------------------------------------------
STREAM_SUBSCRIBERS = Gauge(
    "statehub_stream_subscribers", "Open event-stream connections.", multiprocess_mode="livesum"
)
STREAM_FRAMES_SENT = Counter(
    "statehub_stream_frames_sent", "Messages sent on event-stream connections (all types)."
)
STREAM_LAGGED = Counter(
    "statehub_stream_lagged", "Connections cut off with `lagged` (close code 4008)."
)

# --- snapshots and the worker --------------------------------------------------------------
SNAPSHOT_SECONDS = Histogram(
    "statehub_snapshot_duration_seconds", "Time to take a snapshot.",
    buckets=SNAPSHOT_SECONDS_BUCKETS,
)  # fmt: skip
SNAPSHOT_BYTES = Histogram(
    "statehub_snapshot_size_bytes", "Compressed size of the snapshots taken.",
    buckets=SNAPSHOT_BYTES_BUCKETS,
)  # fmt: skip
WORKER_JOB_RUNS = Counter(
    "statehub_worker_job_runs", "Worker job runs by job and outcome (ok, failed).",
    ["job", "outcome"],
)  # fmt: skip
WORKER_JOB_SECONDS = Histogram(
    "statehub_worker_job_duration_seconds", "Worker job run time.", ["job"],
    buckets=SNAPSHOT_SECONDS_BUCKETS,
)  # fmt: skip

# --- request tracking (sessions_tracking.services.stats(), copied in as counter deltas) ----
TRACKING = Counter(
    "statehub_tracking", "Request-tracking counters (e.g. dropped records), by counter.",
    ["counter"],
)  # fmt: skip


def observe_operation(operation: str, outcome: str, seconds: float) -> None:
    """Count one API request and its latency."""
    OPERATIONS.labels(operation, outcome).inc()
    OPERATION_SECONDS.labels(operation, outcome).observe(seconds)
    _sync_tracking()


# --- tracking counters ----------------------------------------------------------------------

_tracking_seen: dict[str, float] = {}
_tracking_lock = threading.Lock()
_tracking_next = 0.0
TRACKING_SYNC_SECS = 1.0


def _tracking_stats() -> dict[str, float] | None:
    # The hook: sessions_tracking.services.stats() returns {counter name: count since start}.
    try:
        from sessions_tracking import services as tracking
    except ImportError:
        return None
    stats = getattr(tracking, "stats", None)
    return stats() if callable(stats) else None


def _sync_tracking(*, force: bool = False) -> None:
    """Copy this process's tracking counters into TRACKING, at most once a second."""
    global _tracking_next
    now = time.monotonic()
    if not force and now < _tracking_next:
        return
    _tracking_next = now + TRACKING_SYNC_SECS
    try:
        stats = _tracking_stats()
    except Exception:  # noqa: BLE001 - metrics never break a request
        logger.warning("sessions_tracking stats() failed", exc_info=True)
        return
    if not stats:
        return
    with _tracking_lock:
        for name, value in stats.items():
            if not isinstance(value, int | float):
                continue
            delta = value - _tracking_seen.get(name, 0)
            if delta > 0:
                TRACKING.labels(name).inc(delta)
            _tracking_seen[name] = value


# --- scrape-time gauges from the database ----------------------------------------------------


class StoreCollector(Collector):
    """Read the store's size, revision and event-log size from the database at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        from . import selectors

        up = GaugeMetricFamily("statehub_store_up", "Whether the scrape could read the store.")
        try:
            totals = selectors.store_totals()
        except Exception:  # noqa: BLE001 - a scrape must answer even with the database down
            logger.warning("metrics: reading the store failed", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, help_text in (
            ("keys", "Live keys in the store."),
            ("bytes", "Total size of the live values (compact JSON bytes)."),
            ("revision", "The store revision (one a change, gapless)."),
            ("event_log_rows", "Rows in the event log (the stream's replay window)."),
            ("snapshots", "Snapshot records kept."),
        ):
            yield GaugeMetricFamily(f"statehub_store_{name}", help_text, value=totals[name])


# --- exposition -------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def forget_dead_processes(path: str) -> list[int]:
    """Drop the live-gauge files of processes that are gone (killed, or exited uncleanly)."""
    dead = []
    for file in Path(path).glob("gauge_live*_*.db"):
        pid = int(file.stem.rsplit("_", 1)[-1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.append(pid)
        except PermissionError:
            pass  # alive, someone else's
    for pid in set(dead):
        multiprocess.mark_process_dead(pid, path)
    return sorted(set(dead))


class _Scrape:
    """What one scrape exposes: the process's (or every process's) metrics, then the store."""

    def __init__(self, *collectors) -> None:
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def exposition() -> tuple[bytes, str]:
    """Return the metrics text (Prometheus format) and its content type."""
    path = multiprocess_dir()
    if path:
        forget_dead_processes(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)
        source = _Scrape(registry, StoreCollector())
    else:
        source = _Scrape(REGISTRY, StoreCollector())
    _sync_tracking(force=True)
    return generate_latest(source), CONTENT_TYPE_LATEST
