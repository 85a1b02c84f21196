"""WebSocket routes and their handshake authentication (token or Django session)."""

from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.urls import path
from rest_framework.exceptions import AuthenticationFailed

from sessions_tracking.middleware import ConnectionTrackingMiddleware

from .api.authentication import KEYWORDS, BearerTokenAuthentication
from .consumers import StateEventsConsumer

websocket_urlpatterns = [
    path("api/v1/state/events", StateEventsConsumer.as_asgi()),
]


def handshake_token(scope) -> str | None:
    """Return the token of an `Authorization: Bearer|Token` header, else of `?token=`."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            parts = value.split()
            if len(parts) == 2 and parts[0].lower() in KEYWORDS:
                return parts[1].decode("latin-1")
            return ""
    tokens = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return tokens[0] if tokens else None


def user_for_token(key: str):
    """Return the active user owning token `key`, or an anonymous user."""
    try:
        user, _ = BearerTokenAuthentication().authenticate_credentials(key)
    except AuthenticationFailed:
        return AnonymousUser()
    return user


class TokenAuthMiddleware(BaseMiddleware):
    """A token on the handshake decides the user; a wrong token means anonymous, not session."""

    async def __call__(self, scope, receive, send):
        key = handshake_token(scope)
        if key is not None:
            user = await database_sync_to_async(user_for_token)(key) if key else AnonymousUser()
            scope = dict(scope, user=user)
        return await super().__call__(scope, receive, send)


class BrowserOriginValidator(OriginValidator):
    """Refuse cross-site browser handshakes, which could ride a session cookie.

    Unlike channels' AllowedHostsOriginValidator it admits handshakes with no Origin header:
    browsers always send one, and service clients (websockets, curl) send none and prove
    who they are with a token, so there is no cookie for another site to borrow.
    """

    def valid_origin(self, parsed_origin) -> bool:
        return parsed_origin is None or super().valid_origin(parsed_origin)


def websocket_application():
    """Return the WebSocket routes behind origin checking and session-then-token auth."""
    from channels.routing import URLRouter

    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = ["localhost", "127.0.0.1", "[::1]"]
    return BrowserOriginValidator(
        AuthMiddlewareStack(
            TokenAuthMiddleware(ConnectionTrackingMiddleware(URLRouter(websocket_urlpatterns)))
        ),
        allowed,
    )
