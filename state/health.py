"""Operator endpoints: liveness, readiness (each dependency) and Prometheus metrics."""

import hmac
import ipaddress
import logging
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from config.http import DaemonThreadPool

from . import metrics

logger = logging.getLogger(__name__)

# The checks run on threads of their own, so a dependency that hangs (a PostgreSQL pool
# waiting for a server that is gone) costs a probe its timeout, not a request thread.
_checker = DaemonThreadPool(threads=2, name="readyz")


def healthz(request: HttpRequest) -> JsonResponse:
    """Answer 200 while the process serves requests."""
    return JsonResponse({"status": "ok"})


def _database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        if connection.vendor != "sqlite":
            connection.close()  # back to the pool; SQLite keeps this thread's connection


def _channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        return

    async def ping() -> None:
        # A group send reaches Redis with either channels-redis layer and leaves nothing
        # behind (a send to a channel would queue a message nobody reads).
        await layer.group_send("statehub.readyz", {"type": "readyz.ping"})

    async_to_sync(ping)()


CHECKS: dict[str, Callable[[], None]] = {"database": _database, "channel_layer": _channel_layer}


def _run(name: str, check: Callable[[], None]) -> str:
    timeout = settings.STATE_READYZ_TIMEOUT_SECS
    try:
        _checker.submit(check).result(timeout=timeout)
    except TimeoutError:
        return f"error: no answer within {timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        logger.warning("readyz: %s is down: %s", name, exc)
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"


def readyz(request: HttpRequest) -> JsonResponse:
    """Answer 200 when every dependency answers, else 503 naming the ones that are down."""
    checks = {name: _run(name, check) for name, check in CHECKS.items()}
    down = [name for name, result in checks.items() if result != "ok"]
    body = {"status": "unavailable" if down else "ok", "checks": checks, "down": down}
    return JsonResponse(body, status=503 if down else 200)


def _metrics_allowed(request: HttpRequest) -> tuple[bool, int]:
    """Whether this client may scrape, and the status to refuse it with."""
    token = settings.STATE_METRICS_TOKEN
    if token:
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(sent.strip(), token)
        return ok, 401
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback, 403
    except ValueError:
        return False, 403


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Expose the metrics in the Prometheus text format (loopback only, or with the token)."""
    allowed, status = _metrics_allowed(request)
    if not allowed:
        message = (
            "Send Authorization: Bearer <STATE_METRICS_TOKEN>."
            if status == 401
            else "Metrics are served to loopback clients only; set STATE_METRICS_TOKEN."
        )
        return HttpResponse(message, status=status, content_type="text/plain")
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)
