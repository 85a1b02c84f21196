"""Settings for the load bench: the project's own, plus the naive baseline app and database.

The baseline must be what a Django user gets with default settings, served by the same
process from the same database: so the "naive" alias points at the same database as
"default" but with Django's default connection handling (no pool, CONN_MAX_AGE 0, no
SQLite WAL/IMMEDIATE options), and a router sends the naive app there.
"""

from config.settings import *  # noqa: F403
from config.settings import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.naive.apps.NaiveConfig"]

DATABASES = {
    **DATABASES,
    "naive": {
        key: DATABASES["default"][key]
        for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")
        if key in DATABASES["default"]
    },
}
DATABASE_ROUTERS = ["bench.routers.NaiveRouter"]
ROOT_URLCONF = "bench.urls"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    # The tracking writer's counters, logged when a server stops (bench/tracking.py reads them).
    "loggers": {"sessions_tracking": {"level": "INFO"}},
}
