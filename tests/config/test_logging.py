"""Log lines: JSON when asked, the correlation id, and no secret in any line."""

import io
import json
import logging
import os
import subprocess
import sys

import pytest
from django.conf import settings

from config.logging import CorrelationIdFilter, JsonFormatter, RedactingFormatter
from sessions_tracking import correlation

ROOT = settings.BASE_DIR
DRF_TOKEN = "4c1b" + "9e" * 18
FERNET = "gAAAAABnQ2s1" + "Zm9vYmFy" * 8 + "=="
SECRETS = [DRF_TOKEN, FERNET, "hunter2-password", "s3ss10n-c00kie", "redis-pa55word"]


def emit(formatter: logging.Formatter, *args, **kwargs) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(CorrelationIdFilter())
    log = logging.getLogger("tests.logging")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning(*args, **kwargs)
    finally:
        log.removeHandler(handler)
    return stream.getvalue()


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


LEAKY = (
    "auth %s; cookie %s; ws %s; url %s; value %s",
    f"Authorization: Bearer {DRF_TOKEN}",
    "Cookie: sessionid=s3ss10n-c00kie; csrftoken=abc",
    f"/api/v1/state/events?token={DRF_TOKEN}",
    "redis://:redis-pa55word@127.0.0.1:6379/0",
    FERNET,
)


def test_json_lines_carry_the_fields_and_the_correlation_id():
    reset = correlation.current.set("req-42")
    try:
        line = emit(JsonFormatter(), "hello %s", "world")
    finally:
        correlation.current.reset(reset)
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["message"] == "hello world"
    assert (record["level"], record["logger"]) == ("WARNING", "tests.logging")
    assert record["correlation_id"] == "req-42"
    assert record["process"] == os.getpid()
    assert record["time"].endswith("+00:00")


def test_json_lines_have_a_null_correlation_id_outside_a_request():
    assert json.loads(emit(JsonFormatter(), "idle"))["correlation_id"] is None


def test_json_lines_redact_messages_arguments_extras_and_tracebacks():
    headers = {
        "HTTP_AUTHORIZATION": f"Token {DRF_TOKEN}",
        "HTTP_COOKIE": "sessionid=s3ss10n-c00kie",
    }
    line = emit(JsonFormatter(), *LEAKY, extra={"headers": headers})
    assert_no_secret(line)
    record = json.loads(line)
    assert record["message"] == (
        "auth Authorization: Bearer [REDACTED]; cookie Cookie: [REDACTED]; "
        "ws /api/v1/state/events?token=[REDACTED]; url redis://:[REDACTED]@127.0.0.1:6379/0; "
        "value [REDACTED]"
    )
    assert record["headers"]["HTTP_AUTHORIZATION"] == "Token [REDACTED]"

    try:
        raise ValueError(f"bad password=hunter2-password for {DRF_TOKEN}")
    except ValueError:
        line = emit(JsonFormatter(), "failed", exc_info=True)
    assert_no_secret(line)
    assert "ValueError: bad password=[REDACTED]" in json.loads(line)["exc_info"]


def test_text_lines_are_redacted_too():
    reset = correlation.current.set("req-7")
    try:
        line = emit(RedactingFormatter(), *LEAKY)
    finally:
        correlation.current.reset(reset)
    assert_no_secret(line)
    assert " WARNING [req-7] tests.logging: auth Authorization: Bearer [REDACTED];" in line


def test_the_configured_secret_key_is_redacted_wherever_it_appears():
    assert settings.SECRET_KEY not in emit(JsonFormatter(), "key is %s", settings.SECRET_KEY)


def test_ordinary_text_is_left_alone():
    message = "set user:alice:prefs to version 3 (Token verification is separate)"
    assert json.loads(emit(JsonFormatter(), message))["message"] == message


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_state_log_format_json_makes_every_line_of_a_real_process_json():
    code = (
        "import logging; log = logging.getLogger('state.x');"
        f"log.warning('token=%s', {DRF_TOKEN!r}); log.error('db %s', 'postgres://u:redis-pa55word@h/d');"
        "logging.getLogger('django.request').warning('Not Found: %s', '/x')"
    )
    result = run_python(code, STATE_LOG_FORMAT="json", LOG_LEVEL="INFO")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["logger"] for r in records] == ["state.x", "state.x", "django.request"]
    assert_no_secret(result.stderr)


def test_an_unknown_log_format_stops_start_up():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "STATE_LOG_FORMAT": "xml"}, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "STATE_LOG_FORMAT must be text or json" in result.stderr


def test_uvicorn_access_log_lines_go_through_the_redacting_json_formatter(tmp_path):
    pytest.importorskip("uvicorn")
    from tests.e2e.conftest import _free_port, _wait_ready

    port = _free_port(set())
    log = tmp_path / "uvicorn.log"
    env = {**os.environ, "STATE_LOG_FORMAT": "json", "LOG_LEVEL": "INFO",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}  # fmt: skip
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--lifespan", "off"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_ready(process, port, log, timeout=60)
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz?token={DRF_TOKEN}", timeout=10)
    finally:
        process.terminate()
        process.wait(timeout=20)
    text = log.read_text()
    assert_no_secret(text)
    records = [json.loads(line) for line in text.strip().splitlines()]
    access = [r for r in records if r["logger"] == "uvicorn.access" and "token=" in r["message"]]
    assert access and "token=[REDACTED]" in access[0]["message"], text
