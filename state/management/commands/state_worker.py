"""manage.py state_worker: run the periodic jobs (expiry, snapshots, log compaction)."""

import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from state.worker import JOBS, Worker


class Command(BaseCommand):
    help = (
        "Run the background worker: expire keys whose TTL passed, take periodic snapshots "
        "(STATE_SNAPSHOT_INTERVAL_SECS, when STATE_PERSISTENCE_ENABLED), compact the event log. "
        "Safe to run several at once. Stops cleanly on SIGTERM or SIGINT."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run every due job once and exit.")
        parser.add_argument(
            "--jobs",
            help=f"Comma-separated jobs to run (default all: {', '.join(j.name for j in JOBS)}).",
        )
        parser.add_argument("--name", default="", help="This worker's name in job leases.")
        parser.add_argument(
            "--tick", type=float, default=None, help="Seconds between schedule checks."
        )

    def handle(self, *args, once: bool, jobs: str | None, name: str, tick: float | None, **options):
        chosen = JOBS
        if jobs:
            wanted = [part.strip() for part in jobs.split(",") if part.strip()]
            known = {job.name: job for job in JOBS}
            unknown = [job for job in wanted if job not in known]
            if unknown:
                raise CommandError(
                    f"Unknown jobs: {', '.join(unknown)}. Known: {', '.join(known)}."
                )
            chosen = [known[job] for job in wanted]
        worker = Worker(
            jobs=chosen,
            tick_secs=settings.STATE_WORKER_TICK_SECS if tick is None else tick,
            name=name,
        )
        if once:
            for run in worker.run_due():
                self.stdout.write(f"{run.name}: {run.result}")
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        self.stdout.write(f"worker {worker.name} running; SIGTERM or Ctrl-C stops it")
        self.stdout.flush()
        worker.run_forever()
        self.stdout.write(f"worker {worker.name} stopped")
