"""manage.py rotate_keys: re-encrypt every stored value with the newest encryption key."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from state import services
from state.exceptions import StateError


class Command(BaseCommand):
    help = (
        "Re-encrypt the values under STATE_ENCRYPTED_PREFIXES (entries and event log) with the "
        "first key of STATE_ENCRYPTION_KEYS, in batches; --check only counts what is left."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500, help="Rows per transaction.")
        parser.add_argument(
            "--check",
            action="store_true",
            help="Change nothing; count rows the newest key alone cannot open (exit 1 if any).",
        )

    def handle(self, *args, batch_size: int, check: bool, **options):
        if not settings.STATE_ENCRYPTED_PREFIXES:
            raise CommandError("STATE_ENCRYPTED_PREFIXES is empty: nothing is encrypted.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            if check:
                remaining = services.values_stale()
                self.stdout.write(f"rows needing rotation: {remaining}")
                if remaining:
                    raise CommandError(f"{remaining} rows still need an older key.")
                return
            result = services.values_reencrypt(batch_size=batch_size)
        except StateError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"entries re-encrypted: {result.entries}")
        self.stdout.write(f" events re-encrypted: {result.events}")
        self.stdout.write(f"   rows still stale: {result.remaining}")
        if result.remaining:
            raise CommandError(
                f"{result.remaining} rows were written with an older key during the run "
                "(a process still configured with old keys?); run rotate_keys again."
            )
        if result.snapshots:
            self.stdout.write(
                f"{result.snapshots} kept snapshots were taken before this run and need the keys "
                "they were sealed with to restore: take a new snapshot and delete them (or keep "
                "their keys) before dropping older keys."
            )
        self.stdout.write("Every stored value now opens with the newest key alone.")
