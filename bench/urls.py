from django.urls import path

from bench.naive import views
from config.urls import urlpatterns as project_urlpatterns

urlpatterns = [
    *project_urlpatterns,
    path("bench/plain", views.plain, name="bench-plain"),
    path("bench/naive/<str:key>", views.NaiveEntryView.as_view(), name="bench-naive"),
]
