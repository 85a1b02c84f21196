"""System checks of the tracking settings (run by `manage.py check` and at server start)."""

from django.conf import settings
from django.core import checks

from state import rules


@checks.register()
def tracking_settings(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """Refuse prefixes that cannot start a key; warn when heartbeats cannot keep sessions up."""
    found: list[checks.CheckMessage] = []
    for name in ("STATE_REQUEST_PREFIX", "STATE_SESSION_PREFIX"):
        prefix = getattr(settings, name)
        # Non-empty: a correlation id may start with "." or "-", which cannot start a key.
        if not prefix or not rules.KEY_PATTERN.fullmatch(prefix + "x") or len(prefix) > 100:
            found.append(checks.Error(
                f"{name}={prefix!r} cannot start a key (1-256 of A-Z a-z 0-9 _ . : @ -, "
                "starting with a letter or digit; 1 to 100 here).",
                id="sessions_tracking.E001",
            ))  # fmt: skip
    if settings.STATE_SESSION_HEARTBEAT_WRITE_SECS >= settings.STATE_SESSION_IDLE_SECS:
        found.append(checks.Warning(
            "STATE_SESSION_HEARTBEAT_WRITE_SECS is not below STATE_SESSION_IDLE_SECS: sessions of "
            "open WebSocket connections will turn inactive between heartbeats.",
            id="sessions_tracking.W001",
        ))  # fmt: skip
    return found
