from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import SnapshotViewSet, StateViewSet

# Snapshot routes come first: otherwise `snapshots` would be taken for a `{key}`.
snapshot_router = SimpleRouter(trailing_slash=False)
snapshot_router.register("snapshots", SnapshotViewSet, basename="snapshot")

router = SimpleRouter(trailing_slash=False)
router.register("", StateViewSet, basename="state")

urlpatterns = [
    path(
        "snapshot",
        SnapshotViewSet.as_view({"post": "create"}, basename="snapshot"),
        name="snapshot-take",
    ),
    *snapshot_router.urls,
    *router.urls,
]


def route_words() -> set[str]:
    """Return the literal first path segments under /api/v1/state/ (HTTP and WebSocket)."""
    from state.routing import websocket_urlpatterns

    words = set()
    for pattern in urlpatterns:
        first = str(pattern.pattern).removeprefix("^").removesuffix("$").split("/")[0]
        if first and "(" not in first:
            words.add(first)
    for pattern in websocket_urlpatterns:
        words.add(str(pattern.pattern).removeprefix("api/v1/state/").split("/")[0])
    return words
