"""The project's routes plus two views that show what a view sees of the correlation id."""

from django.http import JsonResponse
from django.urls import include, path

from sessions_tracking import correlation


def show_correlation_id(request):
    return JsonResponse({"correlation_id": correlation.get()})


def broken(request):
    raise RuntimeError("a bug in a view")


urlpatterns = [
    path("test/correlation", show_correlation_id),
    path("test/broken", broken),
    path("", include("config.urls")),
]
