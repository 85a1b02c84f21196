"""Production settings: the SECRET_KEY refusal and `manage.py check --deploy`, in real processes."""

import os
import re
import secrets
import subprocess
import sys

import pytest

from .conftest import ROOT, _free_port, _wait_ready

# What `check --deploy` still reports on the embedded default (plain HTTP on loopback, no
# SECRET_KEY set); each is explained in the README's "Running in production".
DEMO_EXCEPTIONS = {"security.W004", "security.W008", "security.W009", "security.W012",
                   "security.W016"}  # fmt: skip
PRODUCTION = {
    "SECRET_KEY": secrets.token_urlsafe(50),
    "DEBUG": "false",
    "ALLOWED_HOSTS": "statehub.example.com",
    "STATE_HTTPS": "true",
    "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
}


def clean_env(**extra: str) -> dict[str, str]:
    drop = {"SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "STATE_HTTPS", "DATABASE_URL", "REDIS_URL"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SECURE_")}
    return {**env, **extra}


def check_deploy(env: dict[str, str]) -> tuple[int, set[str], str]:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    return result.returncode, set(re.findall(r"\((security\.\w+)\)", output)), output


def test_check_deploy_passes_with_production_settings():
    code, issues, output = check_deploy(clean_env(**PRODUCTION))
    assert (code, issues) == (0, set()), output


def test_check_deploy_on_the_demo_reports_only_the_documented_exceptions():
    code, issues, output = check_deploy(clean_env())
    assert code != 0 and issues == DEMO_EXCEPTIONS, output


def start_server(env: dict[str, str], log) -> tuple[subprocess.Popen, int]:
    port = _free_port(set())
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "config.asgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    return process, port


@pytest.mark.parametrize("key", [None, ""])
def test_a_server_without_secret_key_refuses_to_start_when_debug_is_false(key, tmp_path):
    env = clean_env(DEBUG="false") if key is None else clean_env(DEBUG="false", SECRET_KEY=key)
    process, _ = start_server(env, tmp_path / "daphne.log")
    try:
        assert process.wait(timeout=60) != 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "SECRET_KEY is not set, and DEBUG is false" in (tmp_path / "daphne.log").read_text()


# A key starting with "$" is taken verbatim (django-environ would read it as a reference).
@pytest.mark.parametrize(
    "extra", [{"DEBUG": "true"}, {"DEBUG": "false", "SECRET_KEY": "$" + secrets.token_hex(30)}]
)
def test_a_server_starts_with_a_key_or_in_debug(extra, tmp_path):
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", **extra)
    log = tmp_path / "daphne.log"
    process, port = start_server(env, log)
    try:
        _wait_ready(process, port, log, timeout=60)
    finally:
        process.terminate()
        process.wait(timeout=10)
