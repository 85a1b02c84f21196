from django.contrib import admin
from django.urls import include, path, re_path
from django.views import defaults
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from state import health
from state.admin.live import live_view
from state.api import errors

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
    # Last: anything else under /api/ is a 404 in the envelope, with DEBUG on or off.
    re_path(r"^api/", errors.not_found, name="api-not-found"),
]


# Django's own error pages, in the envelope under /api/ (HTML elsewhere, e.g. the admin).
def handler400(request, exception):
    if errors.is_api(request):
        return errors.api_error(request, exception, status_code=400)
    return defaults.bad_request(request, exception)


def handler403(request, exception):
    if errors.is_api(request):
        return errors.api_error(request, exception, status_code=403)
    return defaults.permission_denied(request, exception)


def handler404(request, exception):
    if errors.is_api(request):
        return errors.api_error(request, exception, status_code=404)
    return defaults.page_not_found(request, exception)


def handler500(request):
    if errors.is_api(request):
        return errors.api_error(request, None, status_code=500)
    return defaults.server_error(request)
