"""ASGI entry point: Django for HTTP (config.http's pooled handler); the event stream WebSocket."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.conf import settings  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402

# A server is the one thing a leaked or shared key compromises (sessions, CSRF, signing).
if not settings.DEBUG and settings.SECRET_KEY == settings.STATE_INSECURE_SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set, and DEBUG is false: refusing to serve with the embedded "
        "default key. Set SECRET_KEY to a long random value (python -c 'import secrets; "
        "print(secrets.token_urlsafe(50))'), or run the demo with `manage.py serve` (it "
        "generates one), or set DEBUG=true for development."
    )

from config.http import get_http_application  # noqa: E402

# Set Django up (inside get_http_application) before anything imports models.
http_application = get_http_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from sessions_tracking.lifespan import lifespan  # noqa: E402
from state.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": websocket_application(),
        "lifespan": lifespan,  # servers that speak it (uvicorn, granian): flush on shutdown
    }
)

from config import heap  # noqa: E402

heap.tune()  # last: everything start-up imports and builds is in the frozen heap
