"""Rate limits per user and operation class (read, write, bulk, snapshot), DRF throttling.

Fixed windows counted in Django's cache (Redis when REDIS_URL is set, so every process
shares one count; local memory otherwise): one counter a user, class and window, created
with the window's expiry, bumped with one `incr`. Not DRF's SimpleRateThrottle, which keeps
each request's timestamp in a list it reads and rewrites whole on every request. A fixed
window lets a client send up to twice the rate across a window boundary; the cost is one
cache round trip a request on a connection the process keeps (bench/run.py --rate-limiter).
"""

import functools
import logging
import time

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.redis import RedisCache
from django.core.signals import setting_changed
from django.dispatch import receiver
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """Return (requests, seconds) of a DRF rate such as "100/s" or "6000/min"."""
    requests, _, period = rate.partition("/")
    return int(requests), PERIODS[period[:1]]


@functools.cache
def _backend() -> BaseCache:
    """The default cache, one backend for the process. Not `caches["default"]`: Django keeps
    that one per request context under ASGI, so every request built a new Redis client with a
    new connection pool and opened (and dropped) a TCP connection of its own (measured: 100
    GETs, 102 connections in Redis's total_connections_received)."""
    return caches.create_connection("default")


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs) -> None:
    if setting == "CACHES":
        _backend.cache_clear()


def _count(key: str, timeout: int) -> int:
    """Add one to the window counter `key` (created on first use) and return it."""
    backend = _backend()
    if isinstance(backend, RedisCache):
        return _count_in_redis(backend, key, timeout)
    for _ in range(3):
        try:
            return backend.incr(key)
        except ValueError:  # not there yet (or it just expired)
            if backend.add(key, 1, timeout=timeout):
                return 1
    return 1


def _count_in_redis(backend: RedisCache, key: str, timeout: int) -> int:
    # One round trip, not Django's incr (EXISTS, then INCR) after an add: measured on this
    # machine, 0.46 ms a request instead of 1.3 ms. MULTI/EXEC so the counter always carries
    # its expiry. Through the cache's own client: its pool, its key prefix and version.
    name = backend.make_and_validate_key(key)
    pipe = backend._cache.get_client(name, write=True).pipeline(transaction=True)
    pipe.set(name, 0, ex=timeout, nx=True)
    pipe.incr(name)
    return pipe.execute()[1]


_warned_at = 0.0


def _warn_unavailable() -> None:
    global _warned_at
    if time.monotonic() - _warned_at > 60:
        _warned_at = time.monotonic()
        logger.warning("rate limits: the cache is unreachable; requests pass unlimited meanwhile")


class OperationRateThrottle(BaseThrottle):
    """Refuse a user's request once their operation class used up its window's rate."""

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view) -> bool:
        _, scope = view.operation  # set by InstrumentedViewSet.initial
        rate = settings.STATE_RATE_LIMITS.get(scope)
        user = request.user
        if rate is None or not user.is_authenticated:
            return True
        limit, seconds = parse_rate(rate)
        now = time.time()
        window = int(now // seconds)
        try:
            # +1 s: a counter outlives its window, so a late incr never restarts it at 1.
            count = _count(f"ratelimit:{scope}:{user.pk}:{window}", seconds + 1)
        except Exception:  # noqa: BLE001 - the cache (Redis) is down: fail open, keep serving
            _warn_unavailable()
            return True
        if count <= limit:
            return True
        self._wait = (window + 1) * seconds - now
        return False

    def wait(self) -> float | None:
        return self._wait
