"""Settings for the load bench: the project's own, plus the naive baseline app and database.

The baseline must be what a Django user gets following Django's documentation, served by the
same process from the same database: so the "naive" alias points at the same database as
"default" with Django's defaults (CONN_MAX_AGE 0, no SQLite WAL/IMMEDIATE options) plus the
PostgreSQL connection pool the docs advise for ASGI, and a router sends the naive app there.
"""

from config.settings import *  # noqa: F403
from config.settings import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.naive.apps.NaiveConfig"]

_naive = {
    key: DATABASES["default"][key]
    for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")
    if key in DATABASES["default"]
}
if _naive["ENGINE"] == "django.db.backends.postgresql":
    # Django's documentation advises its connection pool under ASGI; without it every
    # request opens a PostgreSQL connection, which would flatter us (measured: 2x).
    _naive["OPTIONS"] = {"pool": True}
DATABASES = {**DATABASES, "naive": _naive}
DATABASE_ROUTERS = ["bench.routers.NaiveRouter"]
ROOT_URLCONF = "bench.urls"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
