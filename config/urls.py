from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from state import health
from state.admin.live import live_view

urlpatterns = [
    # Before the admin's own routes, so the live page can sit under /admin/state/.
    path("admin/state/live/", admin.site.admin_view(live_view), name="state-live"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/state/", include("state.api.urls")),
]
