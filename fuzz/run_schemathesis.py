#!/usr/bin/env python
"""Fuzz the API from its own OpenAPI schema with schemathesis, as staff and as a non-staff user.

One real daphne process on a fresh SQLite store; schemathesis loads `/api/v1/schema/` from it
and runs every check, every phase (examples, coverage, fuzzing, stateful) with a fixed seed
and example budget, once per role. `fuzz/hooks.py` adds one check of ours: a rejected
request (4xx/5xx) changes nothing — the store revision read before and after it is equal.

Prints, per role, the requests sent and the failures found, and exits non-zero on any
failure. Used by `.ci/run`:

  .venv/bin/python fuzz/run_schemathesis.py                  # both roles, CI budget
  .venv/bin/python fuzz/run_schemathesis.py --max-examples 200 --role staff
"""

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PORTS = range(18500, 18600)

SEED_USERS = """
import json
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
staff = User.objects.create_user("fuzz-staff", is_staff=True)
user = User.objects.create_user("fuzz-user")
print(json.dumps({"staff": Token.objects.create(user=staff).key,
                  "user": Token.objects.create(user=user).key}))
"""


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def wait_ready(process: subprocess.Popen, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def fuzz(role: str, token: str, port: int, env: dict[str, str], args, reports: Path) -> dict:
    stats = reports / f"{role}.stats.json"
    command = [
        str(VENV_BIN / "schemathesis"), "run", f"http://127.0.0.1:{port}/api/v1/schema/",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--seed", str(args.seed),
        "--max-examples", str(args.max_examples),
        "--generation-database", "none",  # no example database: each run starts from the seed
        "--generation-allow-x00", "false",  # the schema says so: strings never hold NUL
        "--workers", "1",  # sequential: the no-change check reads the revision around each call
        "--header", f"Authorization: Bearer {token}",
        "--request-timeout", "30",
        "--suppress-health-check", "too_slow,filter_too_much",
        "--no-color",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(
        # In the work directory: schemathesis keeps a cache of crashes where it runs.
        command, cwd=reports, capture_output=True, text=True,
        env={**env, "SCHEMATHESIS_HOOKS": "fuzz.hooks", "STATEHUB_FUZZ_STATS": str(stats)},
    )  # fmt: skip
    (reports / f"{role}.log").write_text(result.stdout + result.stderr)
    figures = summarize(result.stdout, stats)
    figures.update(role=role, exit_code=result.returncode, seconds=time.monotonic() - started)
    if result.returncode != 0 or args.verbose:
        print(result.stdout[-20000:], result.stderr[-5000:], sep="\n")
    return figures


def summarize(output: str, stats_file: Path) -> dict:
    """Read the figures: requests and statuses from our hooks, cases and failures from the CLI."""
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    generated = re.search(r"(\d+) generated", output)
    failures = re.search(r"found (\d+) unique failures?", output)
    return {
        "requests": stats.get("requests", 0),
        "server_errors": stats.get("5xx", 0),
        "statuses": {k: v for k, v in sorted(stats.items()) if k.endswith("xx")},
        "cases": int(generated.group(1)) if generated else 0,
        "failures": int(failures.group(1)) if failures else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["staff", "user", "both"], default="both")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="statehub-fuzz-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DATABASE_URL=f"sqlite:///{work / 'fuzz.sqlite3'}",
        STATE_SNAPSHOT_DIR=str(work / "snapshots"),
        STATE_TRACK_REQUESTS="false",  # request records would change the store on every call
        LOG_LEVEL="ERROR",
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),  # the server refuses the embedded default key
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="config.settings",
    )
    manage(env, "migrate", "--noinput")
    tokens = json.loads(manage(env, "shell", "-c", SEED_USERS).strip().splitlines()[-1])
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "config.asgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(work / "server.log").open("w"),
    )  # fmt: skip
    results = []
    try:
        wait_ready(server, port)
        roles = ["staff", "user"] if args.role == "both" else [args.role]
        for role in roles:
            results.append(fuzz(role, tokens[role], port, env, args, work))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    failed = False
    for figures in results:
        print(
            f"schemathesis {figures['role']:>5}: {figures['cases']} test cases, "
            f"{figures['requests']} requests {figures['statuses']}, "
            f"{figures['failures']} failures, {figures['server_errors']} 5xx, "
            f"exit {figures['exit_code']}, {figures['seconds']:.0f}s"
        )
        failed |= figures["exit_code"] != 0 or figures["failures"] != 0
        failed |= figures["server_errors"] != 0
    print(f"work directory: {work}" if args.keep or failed else "", end="")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
