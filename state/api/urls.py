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
