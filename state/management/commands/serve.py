"""Run statehub on the embedded default: migrate, a demo staff user, then server + worker."""

import os
import secrets
import signal
import subprocess
import sys
import time

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


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
        manage = [sys.executable, os.path.abspath(sys.argv[0])]
        daphne = [sys.executable, "-m", "daphne", "-b", host, "-p", str(port)]
        children = [subprocess.Popen([*daphne, "config.asgi:application"])]
        if not no_worker:
            children.append(subprocess.Popen([*manage, "state_worker"]))
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
        failed = [child.args for child in children if child.returncode not in (0, -signal.SIGTERM)]
        if failed:
            self.stderr.write(f"stopped: {failed}")
