from django.apps import AppConfig


class SessionsTrackingConfig(AppConfig):
    name = "sessions_tracking"
    verbose_name = "Request and session tracking"
