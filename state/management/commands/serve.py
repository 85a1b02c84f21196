"""Run statehub on the embedded default: migrate, a demo staff user, then server + worker."""

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from prometheus_client import multiprocess
from rest_framework.authtoken.models import Token

from state import stream


def daphne_command(*, host: str, port: int) -> list[str]:
    """Return the daphne command line `serve` runs, its message limits from the store's own.

    daphne (autobahn) refuses to send a WebSocket message larger than its limit, 1 MiB by
    default, which a change of a 1 MiB value already exceeds.
    """
    limit = str(stream.max_message_bytes())
    # -v 0: daphne's access log writes raw request lines (a WebSocket's ?token=…) straight
    # to stdout, past logging and its redaction (config/logging.py).
    return [
        sys.executable, "-m", "daphne", "-v", "0", "-b", host, "-p", str(port),
        "--websocket-max-message-size", limit, "--websocket-max-frame-size", limit,
        "config.asgi:application",
    ]  # fmt: skip


class Command(BaseCommand):
    help = (
        "Migrate, create a demo staff user and print its token, then run the daphne server and "
        "the state worker until interrupted."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8081)
        parser.add_argument("--user", default="demo", help="Demo staff username (default: demo).")
        parser.add_argument("--no-worker", action="store_true", help="Do not start the worker.")

    def handle(self, *args, host: str, port: int, user: str, no_worker: bool, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        staff, created = get_user_model().objects.get_or_create(
            username=user, defaults={"is_staff": True, "is_superuser": True}
        )
        # The admin password is generated once and shown once: only its hash is stored, so a
        # later run cannot show it again (`manage.py changepassword` sets a new one).
        password = None
        if created or not staff.has_usable_password():
            password = secrets.token_urlsafe(12)
            staff.set_password(password)
            staff.save(update_fields=["password"])
        token, _ = Token.objects.get_or_create(user=staff)
        base = f"http://{host}:{port}"
        shown = (
            f"{password}   (shown this once; keep it)"
            if password
            else f"set earlier; `manage.py changepassword {user}` sets a new one"
        )
        self.stdout.write(
            f"statehub on {base}\n"
            f"  demo staff user: {user}\n"
            f"  token:           {token.key}\n"
            f"  admin:           {base}/admin/  (user {user})\n"
            f"  password:        {shown}\n"
            f"  live page:       {base}/admin/state/live/\n"
            f"  try:  curl -H 'Authorization: Bearer {token.key}' {base}/api/v1/state/stats\n"
            f"  docs: {base}/api/docs/\n"
        )
        env = {**os.environ, "SECRET_KEY": self.secret_key()}
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir()
        manage = [sys.executable, os.path.abspath(sys.argv[0])]
        children = [subprocess.Popen(daphne_command(host=host, port=port), env=env)]
        if not no_worker:
            children.append(subprocess.Popen([*manage, "state_worker"], env=env))
        stopping = []
        # SIGTERM (a supervisor, `kill`) stops the children too, like Ctrl-C does.
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        try:
            while not stopping and all(child.poll() is None for child in children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
        for child in children:
            multiprocess.mark_process_dead(child.pid, env["PROMETHEUS_MULTIPROC_DIR"])
        failed = [child.args for child in children if child.returncode not in (0, -signal.SIGTERM)]
        if failed:
            self.stderr.write(f"stopped: {failed}")

    def secret_key(self) -> str:
        """Return SECRET_KEY from the environment, else the one kept in STATE_SECRET_KEY_FILE."""
        if os.environ.get("SECRET_KEY"):
            return os.environ["SECRET_KEY"]
        path = Path(settings.STATE_SECRET_KEY_FILE)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created owner-only before anything is written to it.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(50) + "\n")
            self.stdout.write(f"  generated SECRET_KEY into {path}\n")
        return path.read_text().strip()

    def metrics_dir(self) -> str:
        """Return an empty PROMETHEUS_MULTIPROC_DIR shared by the server and the worker."""
        path = Path(
            os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.BASE_DIR / "var" / "prometheus"
        )
        path.mkdir(parents=True, exist_ok=True)
        # The library's rule: wipe the directory before the processes writing to it start.
        for stale in path.glob("*.db"):
            stale.unlink()
        return str(path)
