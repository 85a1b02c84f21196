"""statehub settings: the only module that reads the environment."""

import re
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():  # optional; read_env logs a warning-like line when absent
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# --- secrets and HTTPS (issue 11) -----------------------------------------------------------
# Without SECRET_KEY the embedded default key applies: enough for tests and manage.py tools,
# but a server (config/asgi.py) refuses to start with it unless DEBUG is true. `manage.py
# serve` generates a key once into STATE_SECRET_KEY_FILE (git-ignored) and hands it to the
# processes it starts. "django-insecure-" makes `check --deploy` flag it too.
STATE_INSECURE_SECRET_KEY = "django-insecure-statehub-embedded-default-set-SECRET_KEY"
# Read verbatim: django-environ would take a value starting with "$" for a reference to
# another variable (and Django's own key generator uses "$").
SECRET_KEY = env.ENVIRON.get("SECRET_KEY", "") or STATE_INSECURE_SECRET_KEY
STATE_SECRET_KEY_FILE = env.path("STATE_SECRET_KEY_FILE", default=BASE_DIR / "var" / "secret_key")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Behind TLS (STATE_HTTPS=true): redirect to https, HSTS for a year, cookies only over https.
# Each can be set on its own; the loopback demo speaks plain HTTP, so all are off by default.
STATE_HTTPS = env.bool("STATE_HTTPS", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=STATE_HTTPS)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if STATE_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=STATE_HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=STATE_HTTPS)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=STATE_HTTPS)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=STATE_HTTPS)
# A TLS-terminating proxy in front: "HTTP_X_FORWARDED_PROTO,https" (only if it sets the header).
if _proxy_ssl := env.list("SECURE_PROXY_SSL_HEADER", default=[]):
    SECURE_PROXY_SSL_HEADER = tuple(_proxy_ssl)
# Probes and scrapers inside the network speak plain HTTP to the process.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "state",
    "sessions_tracking",
]

MIDDLEWARE = [
    # First: every response, errors from the middleware below included, gets the correlation id.
    "sessions_tracking.middleware.RequestTrackingMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database. The embedded default is a SQLite file tuned for many concurrent writers:
# WAL lets readers proceed during a write, IMMEDIATE transactions take the write lock
# up front (so two writers never deadlock upgrading a read lock), and the busy timeout
# makes a writer wait its turn instead of failing.
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": env.int("SQLITE_BUSY_TIMEOUT_SECS", default=30),
    }
    # Keep each connection open across requests: opening one (and its PRAGMAs) took ~4 ms,
    # inside the write lock, capping SQLite writes near 200/s in the bench. Safe because
    # config/http.py serves requests on a fixed pool of long-lived threads.
    _db["CONN_MAX_AGE"] = env.int("SQLITE_CONN_MAX_AGE", default=600)
    if sqlite_test_name := env.str("SQLITE_TEST_NAME", default=""):
        _db["TEST"] = {"NAME": sqlite_test_name}
elif _db["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI every request runs in a fresh thread, so without a pool Django would
    # open a new PostgreSQL connection per request.
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=40),
        "timeout": env.float("DATABASE_POOL_TIMEOUT_SECS", default=10.0),
    }
    _db["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Channel layer: in memory for the single-process default; Redis when REDIS_URL is set
# so every server process hears every change.
# The layer only rings a doorbell per change (the event log is the truth), so Redis pub/sub
# suits it: one PUBLISH per write, no per-channel lists, and nothing to expire. "groups" picks
# channels-redis's list-based RedisChannelLayer instead (measured in bench/fanout.py).
REDIS_URL = env.str("REDIS_URL", default="")
STATE_STREAM_REDIS_LAYER = env.str("STATE_STREAM_REDIS_LAYER", default="pubsub")
if REDIS_URL:
    _redis_db = urlsplit(REDIS_URL).path.strip("/") or "0"
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": (
                "channels_redis.core.RedisChannelLayer"
                if STATE_STREAM_REDIS_LAYER == "groups"
                else "channels_redis.pubsub.RedisPubSubChannelLayer"
            ),
            # Pub/sub ignores Redis's database numbers: without a prefix naming the database,
            # two stores on one Redis server (db 0 and db 1) rang each other's doorbells.
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"statehub:{_redis_db}"},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Admin and live page (issue 10): where collectstatic puts files for WhiteNoise to serve; the
# end-to-end tests collect into a directory of their own.
STATIC_ROOT = env.path("STATIC_ROOT", default=STATIC_ROOT)
MEDIA_ROOT = env.path("MEDIA_ROOT", default=BASE_DIR / "var" / "media")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    "snapshots": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": env.path("STATE_SNAPSHOT_DIR", default=BASE_DIR / "var" / "snapshots")
        },
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "state.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["state.api.parsers.BoundedJSONParser"],
    "EXCEPTION_HANDLER": "state.api.errors.exception_handler",
    "DEFAULT_METADATA_CLASS": "state.api.metadata.EnvelopedMetadata",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "statehub API",
    "DESCRIPTION": "Centralized JSON state: versions, compare-and-swap, TTLs, audit trail.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # 3.0.3, not 3.1: its JSON Schema draft keeps `integer` apart from numbers such as 1.0,
    # which the API refuses where it wants an integer (under 3.1, 1.0 is a valid integer).
    "OAS_VERSION": "3.0.3",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "state.api.schema.postprocess",
    ],
    # Swagger UI from our own static files (drf-spectacular-sidecar): /api/docs/ works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# statehub's own settings.
STATE_MAX_VALUE_BYTES = env.int("STATE_MAX_VALUE_BYTES", default=1024 * 1024)
STATE_MAX_VALUE_DEPTH = env.int("STATE_MAX_VALUE_DEPTH", default=100)
STATE_MAX_REQUEST_BYTES = env.int("STATE_MAX_REQUEST_BYTES", default=32 * 1024 * 1024)
# One request-size limit: Django refuses larger bodies as DRF's parser does (both answer 413).
DATA_UPLOAD_MAX_MEMORY_SIZE = STATE_MAX_REQUEST_BYTES
STATE_MAX_METADATA_ENTRIES = env.int("STATE_MAX_METADATA_ENTRIES", default=64)
STATE_MAX_METADATA_KEY_LENGTH = env.int("STATE_MAX_METADATA_KEY_LENGTH", default=128)
STATE_MAX_METADATA_VALUE_LENGTH = env.int("STATE_MAX_METADATA_VALUE_LENGTH", default=1024)
STATE_MAX_SOURCE_LENGTH = env.int("STATE_MAX_SOURCE_LENGTH", default=128)
STATE_MAX_TTL_SECS = env.int("STATE_MAX_TTL_SECS", default=10 * 365 * 24 * 3600)
STATE_MAX_BULK_OPERATIONS = env.int("STATE_MAX_BULK_OPERATIONS", default=1000)
STATE_MAX_MGET_KEYS = env.int("STATE_MAX_MGET_KEYS", default=1000)
STATE_LIST_DEFAULT_LIMIT = env.int("STATE_LIST_DEFAULT_LIMIT", default=1000)
STATE_LIST_MAX_LIMIT = env.int("STATE_LIST_MAX_LIMIT", default=10000)
STATE_HOT_KEYS = env.int("STATE_HOT_KEYS", default=10)
STATE_PUBLIC_PREFIXES = env.list(
    "STATE_PUBLIC_PREFIXES", default=["global:", "market:", "feature_flag:"]
)
STATE_USER_NAMESPACES = env.list("STATE_USER_NAMESPACES", default=["user", "session"])
STATE_BROADCAST_CHANGES = env.bool("STATE_BROADCAST_CHANGES", default=True)
STATE_PROGRESS_INTERVAL_SECS = env.float("STATE_PROGRESS_INTERVAL_SECS", default=10.0)
# Event stream: each server process follows the event log on a doorbell or this often
# (how the embedded default sees writes made by other processes).
STATE_STREAM_POLL_INTERVAL_SECS = env.float("STATE_STREAM_POLL_INTERVAL_SECS", default=1.0)
# Messages a connection may have waiting; a subscriber further behind is cut off (4008).
STATE_STREAM_QUEUE_SIZE = env.int("STATE_STREAM_QUEUE_SIZE", default=1000)
# Log rows read per query, live or when a connection replays from since_revision.
STATE_STREAM_BATCH_SIZE = env.int("STATE_STREAM_BATCH_SIZE", default=500)
# How often open connections re-read their user and access rules (revocations, deactivation).
STATE_STREAM_ACCESS_RECHECK_SECS = env.float("STATE_STREAM_ACCESS_RECHECK_SECS", default=30.0)
# With 100+ connections, refreeze the heap out of full GC passes this often (0 = never).
STATE_STREAM_GC_FREEZE_SECS = env.float("STATE_STREAM_GC_FREEZE_SECS", default=60.0)
# Subscribed by default besides the caller's own keys (the seed's propagation rules).
STATE_STREAM_DEFAULT_PREFIXES = env.list(
    "STATE_STREAM_DEFAULT_PREFIXES", default=["global:", "market:"]
)
STATE_SNAPSHOT_INTERVAL_SECS = env.int("STATE_SNAPSHOT_INTERVAL_SECS", default=300)
STATE_MAX_SNAPSHOTS = env.int("STATE_MAX_SNAPSHOTS", default=100)
STATE_PERSISTENCE_ENABLED = env.bool("STATE_PERSISTENCE_ENABLED", default=True)
STATE_EVENT_RETENTION_COUNT = env.int("STATE_EVENT_RETENTION_COUNT", default=1_000_000)
STATE_EVENT_RETENTION_SECS = env.int("STATE_EVENT_RETENTION_SECS", default=7 * 24 * 3600)
# The worker (manage.py state_worker): how often each periodic job runs.
STATE_EXPIRE_INTERVAL_SECS = env.float("STATE_EXPIRE_INTERVAL_SECS", default=1.0)
STATE_EXPIRE_BATCH_SIZE = env.int("STATE_EXPIRE_BATCH_SIZE", default=1000)
STATE_EVENT_COMPACT_INTERVAL_SECS = env.float("STATE_EVENT_COMPACT_INTERVAL_SECS", default=60.0)
STATE_WORKER_TICK_SECS = env.float("STATE_WORKER_TICK_SECS", default=0.5)
# Request and session tracking (sessions_tracking; the seed's StateSyncConfig).
# HTTP requests write request:<id>, request:<id>:completion and session:<username>.
STATE_TRACK_REQUESTS = env.bool("STATE_TRACK_REQUESTS", default=True)
# WebSocket connections keep their user's session:<username> active; pings are heartbeats.
STATE_PROPAGATE_STATE = env.bool("STATE_PROPAGATE_STATE", default=True)
STATE_REQUEST_PREFIX = env.str("STATE_REQUEST_PREFIX", default="request:")
STATE_SESSION_PREFIX = env.str("STATE_SESSION_PREFIX", default="session:")
STATE_REQUEST_TTL_SECS = env.int("STATE_REQUEST_TTL_SECS", default=300)
STATE_SESSION_TTL_SECS = env.int("STATE_SESSION_TTL_SECS", default=3600)
# A session with no heartbeat and no request for this long turns active: false (worker).
STATE_SESSION_IDLE_SECS = env.float("STATE_SESSION_IDLE_SECS", default=300.0)
# Heartbeat-only refreshes of one session are written at most this often.
STATE_SESSION_HEARTBEAT_WRITE_SECS = env.float("STATE_SESSION_HEARTBEAT_WRITE_SECS", default=30.0)
# Paths (prefixes) never tracked: probes, metrics, static files, the event stream handshake.
STATE_TRACKING_UNTRACKED_PATHS = env.list(
    "STATE_TRACKING_UNTRACKED_PATHS",
    default=["/healthz", "/readyz", "/metrics", "/static/", "/admin/jsi18n/",
             "/api/v1/state/events"],
)  # fmt: skip
# The in-process buffer between requests and the background writer.
STATE_TRACKING_BUFFER_SIZE = env.int("STATE_TRACKING_BUFFER_SIZE", default=10_000)
STATE_TRACKING_BATCH_SIZE = env.int("STATE_TRACKING_BATCH_SIZE", default=500)
STATE_TRACKING_FLUSH_INTERVAL_SECS = env.float("STATE_TRACKING_FLUSH_INTERVAL_SECS", default=0.2)
# How long a clean shutdown (SIGTERM) may spend writing what is still buffered.
STATE_TRACKING_SHUTDOWN_TIMEOUT_SECS = env.float(
    "STATE_TRACKING_SHUTDOWN_TIMEOUT_SECS", default=5.0
)
# Allocations between young garbage collections in a server process (config/heap.py; Python's
# own is 700, 2,000 from 3.13); 0 keeps Python's.
STATE_GC_THRESHOLD = env.int("STATE_GC_THRESHOLD", default=10_000)
# Threads per server process running Django's sync request handling (config/http.py).
# Concurrent writes of a process commit together (group commit), so a group can be as large
# as the number of requests in flight: enough threads for every connection a client keeps.
STATE_HTTP_THREADS = env.int("STATE_HTTP_THREADS", default=32)
# Group commit (state/services/writes.py): concurrent writes of one process share one
# transaction of at most this many keys (a bigger bulk still runs, alone).
STATE_GROUP_COMMIT_MAX_KEYS = env.int("STATE_GROUP_COMMIT_MAX_KEYS", default=2000)
# How long a process may reuse a token's user before looking it up again (revocation delay).
STATE_TOKEN_CACHE_SECS = env.float("STATE_TOKEN_CACHE_SECS", default=2.0)

# Encryption at rest (state/crypto.py): values of keys under these prefixes are stored as
# Fernet tokens. Keys: comma-separated Fernet keys, newest first (the first encrypts, all
# decrypt); rotate by prepending a key, then `manage.py rotate_keys`. Checked at start-up.
STATE_ENCRYPTED_PREFIXES = env.list("STATE_ENCRYPTED_PREFIXES", default=[])
STATE_ENCRYPTION_KEYS = env.list("STATE_ENCRYPTION_KEYS", default=[])

# --- operations (issue 11): metrics, logs, rate limits, caches ----------------------------
# /metrics: without a token only loopback clients may scrape; with one, every client must send
# `Authorization: Bearer <token>` (a proxy on the same host makes every client look local).
STATE_METRICS_TOKEN = env.str("STATE_METRICS_TOKEN", default="")
# Where prometheus-client's multiprocess mode keeps each process's values (read by the library
# itself, at import, from the environment; named here so the settings list it). `serve` sets it.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
# /readyz: how long each dependency check may take before it counts as down.
STATE_READYZ_TIMEOUT_SECS = env.float("STATE_READYZ_TIMEOUT_SECS", default=2.0)
# hot_keys in /stats: reads and writes counted 1 in STATE_HOT_KEYS_SAMPLE, in windows of
# STATE_HOT_KEYS_WINDOW_SECS (the current one plus the previous one, linearly decayed).
STATE_HOT_KEYS_SAMPLE = env.int("STATE_HOT_KEYS_SAMPLE", default=1)
STATE_HOT_KEYS_WINDOW_SECS = env.int("STATE_HOT_KEYS_WINDOW_SECS", default=300)
STATE_HOT_KEYS_CAPACITY = env.int("STATE_HOT_KEYS_CAPACITY", default=1000)
STATE_HOT_KEYS_FLUSH_SECS = env.float("STATE_HOT_KEYS_FLUSH_SECS", default=1.0)

# Rate limits per user and operation class, DRF's "N/s", "N/m", "N/h" or "N/d"; "0" or empty
# turns a class off. Off by default: the embedded default serves one trusted loopback user.
# The API's viewsets always carry the throttle (state/api/throttling.py); without a rate it
# returns at once.
STATE_RATE_LIMITS = {
    scope: rate
    for scope in ("read", "write", "bulk", "snapshot")
    if (rate := env.str(f"STATE_RATE_LIMIT_{scope.upper()}", default="").strip()) not in ("", "0")
}
for _scope, _rate in STATE_RATE_LIMITS.items():
    if not re.fullmatch(r"[0-9]+/(s|sec|second|m|min|minute|h|hour|d|day)", _rate):
        raise ImproperlyConfigured(
            f"STATE_RATE_LIMIT_{_scope.upper()} must look like 100/s, 6000/min, 1000/h or 0 (off),"
            f" not {_rate!r}."
        )
# How often each process adds its rate-limit counts to Redis (and learns the other processes'):
# the most another process's requests are late in this one's counts.
STATE_RATE_LIMIT_SYNC_SECS = env.float("STATE_RATE_LIMIT_SYNC_SECS", default=0.05)
# The cache rate limits count in: shared by every process through Redis when REDIS_URL is set.
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
         "KEY_PREFIX": "statehub",
         # A Redis that is down costs a request at most this, then the limiter lets it pass.
         "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}  # fmt: skip

# Logs: plain text, or one JSON object a line (STATE_LOG_FORMAT=json), both with every secret
# redacted (config/logging.py). The servers' own loggers go through the same handler.
STATE_LOG_FORMAT = env.str("STATE_LOG_FORMAT", default="text")
if STATE_LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"STATE_LOG_FORMAT must be text or json, not {STATE_LOG_FORMAT!r}.")
LOGGING_CONFIG = "config.logging.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"correlation": {"()": "config.logging.CorrelationIdFilter"}},
    "formatters": {
        "text": {"()": "config.logging.RedactingFormatter"},
        "json": {"()": "config.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": STATE_LOG_FORMAT,
            "filters": ["correlation"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # py.warnings: warnings, routed into logging by config.logging.configure (WhiteNoise warns
    # when collectstatic has not run).
    "loggers": {
        name: {"handlers": ["console"], "propagate": False}
        for name in (
            "uvicorn",
            "uvicorn.error",
            "uvicorn.access",
            "daphne",
            "django.server",
            "py.warnings",
        )
    },  # fmt: skip
}
