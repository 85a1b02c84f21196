"""manage.py restore: replace the whole store with a snapshot (by id, or from a file)."""

import sys
import time

from django.core.management.base import BaseCommand, CommandError

from state import selectors, services, snapshots
from state.exceptions import StateError

from .snapshot import ProgressBar


class Command(BaseCommand):
    help = (
        "Restore the store from snapshot SNAPSHOT_ID or --file FILE: afterwards it holds exactly "
        "the snapshot's entries. The file is verified first; asks for confirmation unless --yes."
    )
    # call_command(..., stdin=io.StringIO("yes\n")) answers the confirmation in tests.
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("snapshot_id", nargs="?", type=int, help="The snapshot to restore.")
        parser.add_argument("--file", help="Restore from this snapshot file instead.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Verify the snapshot and change nothing."
        )
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
        parser.add_argument("--no-progress", action="store_true", help="Draw no progress bar.")

    def handle(self, *args, snapshot_id: int | None, file: str | None, **options):
        if (snapshot_id is None) == (file is None):
            raise CommandError("Give either a SNAPSHOT_ID or --file FILE (not both).")
        try:
            self._describe(snapshot_id, file)
            if not options["dry_run"] and not options["yes"]:
                self._confirm(options.get("stdin") or sys.stdin)
            bar = ProgressBar(self.stderr, enabled=not options["no_progress"])
            started = time.monotonic()
            try:
                result = services.state_restore(
                    snapshot_id=snapshot_id,
                    path=file,
                    dry_run=options["dry_run"],
                    actor="manage.py",
                    progress=bar,
                )
            finally:
                bar.finish()
        except StateError as exc:
            raise CommandError(f"Restore refused: {exc.message}") from exc
        verdict = "verified (dry run, nothing changed)" if result.dry_run else "restored"
        self.stdout.write(f"   result: {verdict}")
        self.stdout.write(f"     keys: {result.key_count}")
        self.stdout.write(f"    bytes: {result.total_size}")
        self.stdout.write(f" snapshot: revision {result.snapshot_revision}")
        if result.revision is not None:
            self.stdout.write(f" revision: {result.revision} (the store's, after the restore)")
        self.stdout.write(f" checksum: {result.checksum}")
        self.stdout.write(f"     took: {time.monotonic() - started:.2f}s")

    def _describe(self, snapshot_id: int | None, file: str | None) -> None:
        if snapshot_id is not None:
            snap = selectors.snapshot_get(snapshot_id=snapshot_id)
            self.stdout.write(
                f"Snapshot {snap.pk} ({snap.label or 'no label'}): {snap.key_count} keys at "
                f"revision {snap.revision}, taken {snap.created_at:%Y-%m-%d %H:%M:%S} UTC."
            )
            return
        try:
            with open(file, "rb") as stream:  # type: ignore[arg-type]
                header = snapshots.Reader(stream).header
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror}.") from exc
        self.stdout.write(
            f"File {file}: {header.key_count} keys at revision {header.revision}, taken "
            f"{header.created_at:%Y-%m-%d %H:%M:%S} UTC."
        )

    def _confirm(self, stdin) -> None:
        self.stdout.write(
            "This replaces EVERY key in the store with the snapshot's. Type 'yes' to go on: ",
            ending="",
        )
        self.stdout.flush()
        try:
            answer = stdin.readline()
        except (OSError, ValueError):
            answer = ""  # no usable stdin (CI, daemon): that is a no
        if answer.strip().lower() != "yes":
            raise CommandError(
                "Restore cancelled: not confirmed (pass --yes to skip the question)."
            )
