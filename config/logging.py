"""Log formatting: plain text or one JSON object a line, the correlation id, no secrets.

Redaction happens in the formatters, on the finished line (and, for JSON, on each field
before serialization), so it covers the message, its arguments, tracebacks and extra fields
alike, whoever logged them (Django, DRF, the servers' access logs, our code).
"""

import logging
import logging.config
import re
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

REDACTED = "[REDACTED]"

# Optional backslash and quote around a separator, so `key: v`, `key=v`, `"key": "v"` and the
# same inside an already JSON-escaped string (`\"key\": \"v\"`) all match.
_SEP = r"""\\?["']?\s*[:=]\s*\\?["']?"""
# name=value, as in a Cookie header (attributes such as HttpOnly end it).
_COOKIE_PAIR = r"""[^\s;"'\\=]+=[^;\s"'\\]*"""
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization headers: keep the scheme, drop the credential.
    (
        re.compile(
            rf"(?i)((?:proxy[-_])?authorization{_SEP}(?:(?:bearer|token|basic|digest)\s+)?)"
            r"""(?!\[REDACTED|(?:bearer|token|basic|digest)\s)[^\s"'\\,;}]+"""
        ),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer\s+)(?!\[REDACTED)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{REDACTED}"),
    # Cookie and Set-Cookie headers: the whole value.
    (
        re.compile(rf"(?i)((?:set-)?cookie{_SEP})" + _COOKIE_PAIR + rf"(?:;\s*{_COOKIE_PAIR})*"),
        rf"\1{REDACTED}",
    ),
    # name=value / "name": "value" pairs whose name says secret.
    (
        re.compile(
            r"(?i)\b([\w-]*(?:token|password|passwd|secret|sessionid|csrftoken|api[_-]?key"
            rf"|signature|encryption[_-]?keys?)[\w-]*{_SEP})"
            r"""(?!\[REDACTED)[^\s"'\\&,;}\]]+"""
        ),
        rf"\1{REDACTED}",
    ),
    # Passwords in URLs (DATABASE_URL, REDIS_URL).
    (re.compile(r"""(\b[a-z][a-z0-9+.-]*://[^:/\s@"']*:)[^@\s"'/]+@"""), rf"\1{REDACTED}@"),
    # DRF tokens (40 hex digits) and Fernet tokens (encrypted values), wherever they appear.
    (re.compile(r"\b[0-9a-f]{40}\b"), REDACTED),
    (re.compile(r"\bgAAAAA[A-Za-z0-9_=-]{20,}"), REDACTED),
]


def _configured_secrets() -> list[str]:
    """Return the secret values in the settings, longest first, to redact verbatim."""
    try:
        from django.conf import settings

        values = [settings.SECRET_KEY, getattr(settings, "STATE_METRICS_TOKEN", "")]
        values += list(getattr(settings, "STATE_ENCRYPTION_KEYS", None) or [])
    except Exception:  # noqa: BLE001 - settings not ready (or broken): patterns still apply
        return []
    return sorted({v for v in values if isinstance(v, str) and len(v) >= 8}, key=len, reverse=True)


def redact(text: str) -> str:
    """Return `text` with tokens, cookies, passwords and encrypted values replaced."""
    for secret in _configured_secrets():
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


class CorrelationIdFilter(logging.Filter):
    """Attach the correlation id of the request being served (or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            from sessions_tracking import correlation

            record.correlation_id = correlation.get()
        return True


def _iso_time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class RedactingFormatter(logging.Formatter):
    """Plain text lines: time, level, correlation id, logger, message; secrets redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(cid)s] %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _iso_time(record)

    def format(self, record: logging.LogRecord) -> str:
        record.cid = getattr(record, "correlation_id", None) or "-"
        return redact(super().format(record))


class JsonFormatter(_JsonFormatter):
    """One JSON object a line: time, level, logger, message, correlation_id, process, extras."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s %(process)d",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _iso_time(record)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return _redact_value(log_data)

    def serialize_log_record(self, log_data: dict[str, Any]) -> str:
        # Extra fields that are objects become text only here: redact the line as well.
        return redact(super().serialize_log_record(log_data))


def configure(config: dict) -> None:
    """LOGGING_CONFIG: Django's dictConfig, plus warnings routed into logging (the py.warnings
    logger), so they leave through the redacting handler, as JSON when the format is json, instead
    of as bare lines on stderr."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
