from django.apps import AppConfig


class StateConfig(AppConfig):
    name = "state"
    verbose_name = "State store"

    def ready(self) -> None:
        from . import crypto

        # Every process (server, worker, command) stops here on a bad key configuration,
        # before it can write a value it should have encrypted.
        crypto.check_configuration()

        from . import checks  # noqa: F401 - registers the system checks
        from .api import schema  # noqa: F401 - registers the OpenAPI extensions
