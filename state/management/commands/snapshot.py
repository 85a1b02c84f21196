"""manage.py snapshot: take a snapshot of the store, export one to a file, or list them."""

import sys
import time

from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from django.template.defaultfilters import filesizeformat

from state import selectors, services
from state.exceptions import StateError


class ProgressBar:
    """A plain-text progress bar on stderr, redrawn at most a few times a second."""

    def __init__(self, stream: OutputWrapper, *, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        # Redrawing in place only makes sense on a terminal; a log gets each phase's last line.
        self.interactive = stream.isatty()
        self._drawn_at = 0.0
        self._open = False
        self._finished: set[str] = set()

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled or label in self._finished:
            return
        now = time.monotonic()
        if done < total and (not self.interactive or now - self._drawn_at < 0.2):
            return
        self._drawn_at = now
        if done >= total:
            self._finished.add(label)
        share = done / total if total else 1.0
        filled = int(share * 30)
        self.stream.write(
            f"\r{label:<8} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} keys {share:4.0%}",
            ending="",
            style_func=str,  # stderr is styled as errors; progress is not one
        )
        self.stream.flush()
        self._open = True
        if done >= total:
            self.finish()

    def finish(self) -> None:
        if self._open:
            self.stream.write("", style_func=str)
            self._open = False


class Command(BaseCommand):
    help = (
        "Take a snapshot of the whole store into snapshot storage (pruning to "
        "STATE_MAX_SNAPSHOTS), or export one to --output FILE without recording it, or --list."
    )

    def add_arguments(self, parser):
        parser.add_argument("--label", default="", help="A label for the snapshot record.")
        parser.add_argument(
            "--output",
            metavar="FILE",
            help="Write the snapshot file to FILE ('-' for stdout) instead of snapshot storage.",
        )
        parser.add_argument("--list", action="store_true", help="List the kept snapshots.")
        parser.add_argument("--no-progress", action="store_true", help="Draw no progress bar.")

    def handle(self, *args, label: str, output: str | None, list: bool, **options):
        if list:
            return self._list()
        bar = ProgressBar(self.stderr, enabled=not options["no_progress"])

        def progress(done: int, total: int) -> None:
            bar("snapshot", done, total)

        started = time.monotonic()
        try:
            if output is None:
                snapshot = services.snapshot_create(
                    label=label, actor="manage.py", progress=progress
                )
                facts = {
                    "snapshot": snapshot.pk,
                    "keys": snapshot.key_count,
                    "bytes": f"{snapshot.total_size} values, {snapshot.compressed_size} compressed",
                    "revision": snapshot.revision,
                    "checksum": snapshot.checksum,
                    "file": snapshot.file.name,
                }
            else:
                header, written = self._export(output, progress)
                facts = {
                    "keys": written.key_count,
                    "bytes": f"{written.total_size} values, {written.compressed_size} compressed",
                    "revision": header.revision,
                    "checksum": written.checksum,
                    "file": output,
                }
        except StateError as exc:
            raise CommandError(exc.message) from exc
        finally:
            bar.finish()
        facts["took"] = f"{time.monotonic() - started:.2f}s"
        # With the file on stdout, the summary goes to stderr.
        summary = self.stderr if output == "-" else self.stdout
        for name, value in facts.items():
            summary.write(f"{name:>9}: {value}")

    def _export(self, output: str, progress):
        if output == "-":
            return selectors.snapshot_dump(target=sys.stdout.buffer, progress=progress)
        try:
            with open(output, "wb") as target:
                return selectors.snapshot_dump(target=target, progress=progress)
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror}.") from exc

    def _list(self) -> None:
        rows = selectors.snapshots_list()
        if not rows:
            self.stdout.write("No snapshots.")
            return
        self.stdout.write(
            f"{'id':>6}  {'created (UTC)':<19}  {'revision':>9}  {'keys':>9}  {'size':>10}  label"
        )
        for snap in rows:
            self.stdout.write(
                f"{snap.pk:>6}  {snap.created_at:%Y-%m-%d %H:%M:%S}  {snap.revision:>9}  "
                f"{snap.key_count:>9}  {filesizeformat(snap.compressed_size):>10}  {snap.label}"
            )
