"""Print the WebSocket message limit every server must run with (see README, production)."""

from django.core.management.base import BaseCommand

from state import stream


class Command(BaseCommand):
    help = (
        "Print the size in bytes of the largest event-stream message, derived from the store's "
        "limits: pass it to the server (uvicorn --ws-max-size, daphne "
        "--websocket-max-message-size)."
    )

    def handle(self, *args, **options):
        self.stdout.write(str(stream.max_message_bytes()))
