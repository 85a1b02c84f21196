"""Correlation ids and tracking for HTTP requests and WebSocket connections.

The middleware only gathers facts (method, redacted uri and headers, status, duration, user)
and hands them to `services`, which buffers them; nothing here touches the database, and no
failure here ever reaches the response.
"""

import logging
import time

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from . import correlation, redaction, services

logger = logging.getLogger(__name__)

HEADER = "X-Correlation-ID"
_INCOMING = ("HTTP_X_CORRELATION_ID", "HTTP_X_REQUEST_ID")


def incoming_id(candidates: list[str | None]) -> str:
    """Return the first valid incoming id, else a new UUID."""
    for candidate in candidates:
        if candidate is not None and correlation.VALID_ID.fullmatch(candidate):
            return candidate
    return correlation.accept(None)


def _headers(meta: dict) -> dict[str, str]:
    """Return the request headers by name, as `request.headers` would (without building it)."""
    headers = {
        name[5:].replace("_", "-").title(): value
        for name, value in meta.items()
        if name.startswith("HTTP_")
    }
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if meta.get(name):
            headers[name.replace("_", "-").title()] = meta[name]
    return headers


def _username(request: HttpRequest) -> str | None:
    # DRF sets request.user on the Django request when it authenticates (token or session).
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return user.get_username()
    return None


class RequestTrackingMiddleware:
    """Give every request a correlation id (echoed as X-Correlation-ID) and track it."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        correlation_id = incoming_id([request.META.get(name) for name in _INCOMING])
        reset = correlation.current.set(correlation_id)
        request.correlation_id = correlation_id
        try:
            started = self._started(request, correlation_id)
            response = self.get_response(request)
            try:
                response[HEADER] = correlation_id
                if started is not None:
                    self._finished(request, response, correlation_id, started)
            except Exception:  # noqa: BLE001 - tracking never breaks the response
                logger.exception("tracking: could not record a request completion")
            return response
        finally:
            correlation.current.reset(reset)

    def _started(self, request: HttpRequest, correlation_id: str) -> tuple[float, str] | None:
        if not settings.STATE_TRACK_REQUESTS or services.is_untracked(request.path):
            return None
        try:
            started_at = services.now_iso()
            uri, headers = redaction.redact_request(
                path=request.path,
                query=request.META.get("QUERY_STRING", ""),
                headers=_headers(request.META),
            )
            services.request_started(
                correlation_id=correlation_id, method=request.method or "", uri=uri,
                headers=headers, started_at=started_at,
            )  # fmt: skip
            return time.perf_counter(), started_at
        except Exception:  # noqa: BLE001
            logger.exception("tracking: could not record a request")
            return None

    def _finished(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        correlation_id: str,
        started: tuple[float, str],
    ) -> None:
        began, started_at = started
        duration_ms = round((time.perf_counter() - began) * 1000, 3)
        try:
            username = _username(request)
        except Exception:  # noqa: BLE001 - a session lookup that fails: no session record
            username = None
        services.request_finished(
            correlation_id=correlation_id, status=response.status_code,
            duration_ms=duration_ms, username=username, started_at=started_at,
        )  # fmt: skip


class ConnectionTrackingMiddleware:
    """ASGI middleware for WebSocket connections: correlation id, and the session kept active.

    Sits inside the authentication middleware (it needs `scope["user"]`). The correlation
    id is set in the connection's context (the consumer runs in this task), put in
    `scope["correlation_id"]` and echoed on the handshake response.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                   for name, value in scope.get("headers", [])}  # fmt: skip
        correlation_id = incoming_id([headers.get("x-correlation-id"), headers.get("x-request-id")])
        scope = dict(scope, correlation_id=correlation_id)
        reset = correlation.current.set(correlation_id)
        connection = _Connection(scope, headers, correlation_id)

        async def tracked_send(message):
            if message["type"] == "websocket.accept":
                echo = (HEADER.lower().encode(), correlation_id.encode())
                message = dict(message, headers=[*message.get("headers", []), echo])
                connection.opened()
            return await send(message)

        try:
            return await self.app(scope, receive, tracked_send)
        finally:
            connection.closed()
            correlation.current.reset(reset)


class _Connection:
    """What tracking records about one WebSocket connection; every step swallows failures."""

    def __init__(self, scope, headers: dict[str, str], correlation_id: str) -> None:
        self.scope, self.headers, self.correlation_id = scope, headers, correlation_id
        self.username: str | None = None
        self.began: float | None = None
        self.started_at = ""

    def opened(self) -> None:
        try:
            user = self.scope.get("user")
            if user is None or not user.is_authenticated:
                return  # refused with 4401 right after the accept
            path = self.scope.get("path", "")
            if settings.STATE_TRACK_REQUESTS and not services.is_untracked(path):
                self.began, self.started_at = time.perf_counter(), services.now_iso()
                uri, headers = redaction.redact_request(
                    path=path, query=self.scope.get("query_string", b"").decode("latin-1"),
                    headers=self.headers,
                )  # fmt: skip
                services.request_started(
                    correlation_id=self.correlation_id, method="GET", uri=uri, headers=headers,
                    started_at=self.started_at,
                )  # fmt: skip
            if settings.STATE_PROPAGATE_STATE:
                self.username = user.get_username()
                services.tracker.connection_opened(self.username)
        except Exception:  # noqa: BLE001
            logger.exception("tracking: could not record a WebSocket connection")

    def closed(self) -> None:
        try:
            if self.username is not None:
                services.tracker.connection_closed(self.username)
            if self.began is not None:
                services.request_finished(
                    correlation_id=self.correlation_id, status=101,
                    duration_ms=round((time.perf_counter() - self.began) * 1000, 3),
                    username=None, started_at=self.started_at,
                )  # fmt: skip
        except Exception:  # noqa: BLE001
            logger.exception("tracking: could not record a WebSocket disconnection")


def connection_heartbeat(scope) -> None:
    """Count a client `ping` on a WebSocket connection as its user's session heartbeat."""
    try:
        user = scope.get("user")
        if settings.STATE_PROPAGATE_STATE and user is not None and user.is_authenticated:
            services.session_heartbeat(username=user.get_username())
    except Exception:  # noqa: BLE001
        logger.exception("tracking: could not record a heartbeat")
