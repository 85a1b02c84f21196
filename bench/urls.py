from django.urls import path

from bench.naive import views
from config.urls import urlpatterns as project_urlpatterns

urlpatterns = [
    *project_urlpatterns,
    path("bench/plain", views.plain, name="bench-plain"),
    path("bench/drf", views.DrfConstantView.as_view(), name="bench-drf"),
    path("bench/naive/<str:key>", views.NaiveEntryView.as_view(), name="bench-naive"),
    # The same two views, which bench/asgi.py serves through Django's stock ASGI handler.
    path("bench/default/plain", views.plain, name="bench-default-plain"),
    path(
        "bench/default/naive/<str:key>", views.NaiveEntryView.as_view(), name="bench-default-naive"
    ),
]
