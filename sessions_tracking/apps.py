from django.apps import AppConfig


class SessionsTrackingConfig(AppConfig):
    name = "sessions_tracking"
    verbose_name = "Request and session tracking"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
