from django.apps import AppConfig


class NaiveConfig(AppConfig):
    """The baseline: the JSON store a Django user would write with default settings."""

    name = "bench.naive"
    label = "naive"
    default_auto_field = "django.db.models.BigAutoField"
