"""Maintenance: expiry sweeps, event-log compaction and the worker's job leases."""

from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Max, Min, Q
from django.utils import timezone

from ..models import StateEntry, StateEvent, WorkerJob
from . import writes
from .writes import Batch, _record_write

# --- expiry -------------------------------------------------------------------------------


def state_expire_due(*, limit: int = 1000, actor: str = "worker") -> int:
    """Remove up to `limit` entries whose TTL has passed, one `expire` event each."""

    def apply(batch: Batch) -> int:
        due = list(
            StateEntry.objects.filter(expires_at__lte=batch.now)
            .order_by("expires_at", "key")
            .values_list("key", flat=True)[:limit]
        )
        batch.load(due)
        for key in due:
            batch.live(key)  # finds it expired: removes it with an `expire` event
        return len(due)

    return writes.commit(actor=actor, keys=[], apply=apply)


def events_compact(
    *,
    keep_count: int | None = None,
    keep_secs: int | None = None,
    batch_size: int = 10_000,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Delete the oldest events beyond the retention (count and age); return how many went.

    Always removes a prefix of the log (everything up to one revision), so the retained log
    stays gapless from its oldest revision on; deletes in batches to keep locks short.
    """
    keep_count = settings.STATE_EVENT_RETENTION_COUNT if keep_count is None else keep_count
    keep_secs = settings.STATE_EVENT_RETENTION_SECS if keep_secs is None else keep_secs
    bounds = [
        StateEvent.objects.order_by("-revision")
        .values_list("revision", flat=True)[keep_count : keep_count + 1]
        .first(),
        StateEvent.objects.filter(
            timestamp__lt=timezone.now() - timedelta(seconds=keep_secs)
        ).aggregate(bound=Max("revision"))["bound"],
    ]
    bound = max((b for b in bounds if b is not None), default=None)
    if bound is None:
        return 0
    deleted = 0
    while not should_stop():
        with _record_write():
            oldest = StateEvent.objects.aggregate(oldest=Min("revision"))["oldest"]
            if oldest is None or oldest > bound:
                break
            count, _ = StateEvent.objects.filter(
                revision__lte=min(bound, oldest + batch_size - 1)
            ).delete()
            deleted += count
    return deleted


# --- worker job schedule ------------------------------------------------------------------


def worker_jobs_register(*, names: list[str]) -> None:
    """Make sure each named job has its schedule row (due now when new)."""
    now = timezone.now()
    with _record_write():
        WorkerJob.objects.bulk_create(
            [WorkerJob(name=name, next_run_at=now) for name in names], ignore_conflicts=True
        )


def worker_job_claim(*, name: str, owner: str, interval_secs: float, lease_secs: float) -> bool:
    """Claim the job's due occurrence for `owner`; False if not due or another worker has it.

    Due means `interval_secs` (this worker's, so a changed interval counts from the last
    run as soon as a worker restarts with it) since the last run started, or never run.
    One conditional UPDATE decides, so of any number of workers exactly one wins.
    """
    now = timezone.now()
    with _record_write():
        claimed = (
            WorkerJob.objects.filter(name=name)
            .filter(
                Q(last_started_at__isnull=True)
                | Q(last_started_at__lte=now - timedelta(seconds=interval_secs))
            )
            # A lease `owner` holds itself is left over: a worker runs its jobs one at a time,
            # so asking means it is not running this one (its finish failed, say, in a
            # database outage); waiting the lease out would stall the job that long.
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lte=now) | Q(lease_owner=owner))
            .update(
                next_run_at=now + timedelta(seconds=interval_secs),
                lease_owner=owner,
                lease_until=now + timedelta(seconds=lease_secs),
                last_started_at=now,
                runs=F("runs") + 1,
            )
        )
    return claimed == 1


def worker_job_finish(*, name: str, owner: str, result: str = "", error: str = "") -> None:
    """Release the job's lease and record how its run ended."""
    with _record_write():
        WorkerJob.objects.filter(name=name, lease_owner=owner).update(
            lease_until=None,
            last_finished_at=timezone.now(),
            last_result=result[:255],
            last_error=error,
        )
