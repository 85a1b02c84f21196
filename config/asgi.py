"""ASGI entry point: Django for HTTP (config.http's pooled handler); the event stream WebSocket."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

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
