"""The background worker: one loop running every registered periodic job when it is due.

A job is one entry in `JOBS`. Each run of a job is claimed in the database first
(`services.worker_job_claim`), so any number of workers can run side by side and each
occurrence of a job runs once, on one of them.
"""

import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections

from sessions_tracking import services as tracking

from . import metrics, selectors, services

logger = logging.getLogger(__name__)

ShouldStop = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class Job:
    """A periodic job: what to run, how often, and whether it is switched on."""

    name: str
    run: Callable[[ShouldStop], str]  # returns a one-line summary of what it did
    interval_secs: Callable[[], float]
    enabled: Callable[[], bool] = lambda: True
    # How long a claimed run may take before another worker may assume its worker died.
    lease_secs: float = 600.0


# What a job's summary starts with when it found nothing to do.
IDLE_RESULTS = (
    "expired 0 keys",
    "removed 0 events",
    "unchanged since",
    "nothing to snapshot",
    "deactivated 0 ",
)


def expire_keys(should_stop: ShouldStop) -> str:
    """Expire every key whose TTL passed, in batches, one `expire` event a key."""
    batch = settings.STATE_EXPIRE_BATCH_SIZE
    total = 0
    while not should_stop():
        expired = services.state_expire_due(limit=batch, actor="worker")
        total += expired
        if expired < batch:
            break
    return f"expired {total} keys"


def take_snapshot(should_stop: ShouldStop) -> str:
    """Take a periodic snapshot unless nothing changed since the newest one; prune old ones."""
    latest = selectors.snapshots_list().first()
    if latest is not None and latest.revision == selectors.store_revision():
        return f"unchanged since snapshot {latest.pk}"
    if latest is None and not selectors.keys_list(limit=1).items:
        # A first start on an empty store: a snapshot of nothing restores nothing.
        return "nothing to snapshot: the store is empty"
    snapshot = services.snapshot_create(label="periodic", actor="worker")
    return f"snapshot {snapshot.pk}: {snapshot.key_count} keys at revision {snapshot.revision}"


def compact_events(should_stop: ShouldStop) -> str:
    """Trim the event log to its configured retention."""
    return f"removed {services.events_compact(should_stop=should_stop)} events"


def deactivate_idle_sessions(should_stop: ShouldStop) -> str:
    """Mark sessions with no heartbeat or request for STATE_SESSION_IDLE_SECS inactive."""
    return f"deactivated {tracking.sessions_deactivate_idle()} idle sessions"


JOBS: list[Job] = [
    Job("expire", expire_keys, lambda: settings.STATE_EXPIRE_INTERVAL_SECS, lease_secs=60.0),
    Job(
        "snapshot",
        take_snapshot,
        lambda: settings.STATE_SNAPSHOT_INTERVAL_SECS,
        enabled=lambda: settings.STATE_PERSISTENCE_ENABLED,
    ),
    Job("compact", compact_events, lambda: settings.STATE_EVENT_COMPACT_INTERVAL_SECS),
    Job(
        "sessions",
        deactivate_idle_sessions,
        lambda: max(settings.STATE_SESSION_IDLE_SECS / 10, 1.0),
        lease_secs=60.0,
    ),
]


@dataclass(frozen=True, slots=True)
class JobRun:
    name: str
    result: str
    error: str = ""


class Worker:
    """Runs due jobs until asked to stop."""

    def __init__(
        self, *, jobs: list[Job] | None = None, tick_secs: float = 1.0, name: str = ""
    ) -> None:
        self.jobs = list(JOBS if jobs is None else jobs)
        self.tick_secs = tick_secs
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stopping = False
        self._registered = False

    def stop(self) -> None:
        """Ask the loop to finish the job in hand and return (safe from a signal handler)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run_due(self) -> list[JobRun]:
        """Run, once, every enabled job that is due and that this worker manages to claim."""
        if not self._registered:
            services.worker_jobs_register(names=[job.name for job in self.jobs])
            self._registered = True
        runs = []
        for job in self.jobs:
            if self._stopping:
                break
            if not job.enabled():
                continue
            claimed = services.worker_job_claim(
                name=job.name,
                owner=self.name,
                interval_secs=job.interval_secs(),
                lease_secs=max(job.lease_secs, job.interval_secs()),
            )
            if claimed:
                runs.append(self._run(job))
        return runs

    def _run(self, job: Job) -> JobRun:
        started = time.monotonic()
        try:
            result, error = job.run(lambda: self._stopping), ""
        except Exception:
            # One failing job must not take the others down; the error is kept on its row.
            result, error = "failed", traceback.format_exc()
            logger.exception("worker job %s failed", job.name)
        services.worker_job_finish(name=job.name, owner=self.name, result=result, error=error)
        metrics.WORKER_JOB_RUNS.labels(job.name, "failed" if error else "ok").inc()
        metrics.WORKER_JOB_SECONDS.labels(job.name).observe(time.monotonic() - started)
        # The expiry sweep runs every second: only runs that did something are worth a line.
        idle = result.startswith(IDLE_RESULTS)
        logger.log(
            logging.DEBUG if idle else logging.INFO,
            "%s: %s (%.2fs)", job.name, result, time.monotonic() - started,
        )  # fmt: skip
        return JobRun(name=job.name, result=result, error=error)

    def run_forever(self) -> None:
        """Loop until `stop()`: run due jobs, then sleep a tick in short, interruptible naps."""
        # DEBUG: the state_worker command prints its own started/stopped lines.
        logger.debug("worker %s started: jobs %s", self.name, ", ".join(j.name for j in self.jobs))
        while not self._stopping:
            # A worker lives for days: drop connections the database has closed meanwhile.
            close_old_connections()
            try:
                self.run_due()
            except Exception:
                # The database may be briefly unreachable; keep the loop alive and retry.
                logger.exception("worker %s could not reach its job schedule", self.name)
            deadline = time.monotonic() + self.tick_secs
            while not self._stopping and time.monotonic() < deadline:
                time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
        logger.debug("worker %s stopped", self.name)
