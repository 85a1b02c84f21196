"""Rate limits per user and operation class (read, write, bulk, snapshot), DRF throttling.

Fixed windows counted in Django's cache (Redis when REDIS_URL is set, so every process
shares one count; local memory otherwise): one counter a user, class and window, created
with the window's expiry. Not DRF's SimpleRateThrottle, which keeps each request's timestamp
in a list it reads and rewrites whole on every request. A fixed window lets a client send up
to twice the rate across a window boundary. With Redis, each process counts its requests
itself and adds them to Redis in the background (`SharedCounts`), so a request never waits
for it (bench/run.py --rate-limiter measures the cost).
"""

import functools
import logging
import os
import threading
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
    new connection pool and opened (and dropped) a TCP connection of its own
    (tests/e2e/test_shared_counts.py counts them)."""
    return caches.create_connection("default")


# Adds a process's increments to a window counter in one step, and gives the counter its
# window's expiry if it has none (a new counter), atomically: a script runs whole.
_ADD_SCRIPT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return count
"""


class SharedCounts:
    """Window counters counted in this process and added to Redis in the background.

    A request never waits for Redis: with a synchronous count a request (one script call, one
    round trip), bench/run.py --rate-limiter measured 0.82x of our GET's throughput without
    the limiter. Instead a count is what Redis last returned for the counter plus this
    process's increments since, and a thread adds those increments
    every STATE_RATE_LIMIT_SYNC_SECS (one pipelined round trip for every counter). Within one
    process the count is exact; another process's requests show up here one sync (and a
    round trip) late, so across N processes a user gets at most the limit plus what the
    other processes let through in one interval.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the three maps; never held across Redis
        # One sync at a time: a second one would replace `_sending` while the first is still
        # on its way, and those increments would drop out of every count until Redis answered.
        self._sync_lock = threading.Lock()
        self._pending: dict[str, tuple[int, int]] = {}  # key: (increments, timeout) unsent
        self._sending: dict[str, int] = {}  # increments on their way to Redis
        self._known: dict[str, tuple[int, float]] = {}  # key: (Redis's count, forget after)
        self._generation = 0  # moved by reset: a sync in flight across it applies nothing
        self._thread_pid = 0  # the process the background thread runs in
        self._pid = 0

    def add(self, key: str, timeout: int) -> int:
        """Count one request on counter `key` (expiring after `timeout` s); return the count."""
        with self._lock:
            if self._pid != os.getpid():  # a forked worker: nothing of the parent's applies
                self._reset()
            pending, _ = self._pending.get(key, (0, timeout))
            self._pending[key] = (pending + 1, timeout)
            if self._thread_pid != os.getpid():  # one thread a process, started on first use
                self._thread_pid = os.getpid()
                threading.Thread(target=self._run, name="rate_limits", daemon=True).start()
            known, _ = self._known.get(key, (0, 0.0))
            return known + self._sending.get(key, 0) + pending + 1

    def sync(self) -> None:
        """Add the pending increments to Redis and learn every counter's total from it."""
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
            self._sending = {key: count for key, (count, _) in batch.items()}
            generation = self._generation
        if not batch:
            return
        try:
            backend, script = _backend(), _add_script()
            pipe = backend._cache.get_client(write=True).pipeline(transaction=False)  # type: ignore[attr-defined]
            for key, (count, timeout) in batch.items():
                name = backend.make_and_validate_key(key)
                script(keys=[name], args=[count, timeout], client=pipe)
            totals = pipe.execute()
        except Exception:
            with self._lock:  # Redis is unreachable: go on counting here, send them next time
                if generation == self._generation:
                    for key, (count, timeout) in batch.items():
                        pending, _ = self._pending.get(key, (0, timeout))
                        self._pending[key] = (pending + count, timeout)
                    self._sending = {}
            raise
        now = time.monotonic()
        with self._lock:
            if generation != self._generation:  # counts were reset meanwhile (new limits)
                return
            self._sending = {}
            for (key, (_, timeout)), total in zip(batch.items(), totals, strict=True):
                self._known[key] = (int(total), now + timeout)
            for key in [k for k, (_, until) in self._known.items() if until < now]:
                del self._known[key]

    def reset(self) -> None:
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self._pending, self._sending, self._known = {}, {}, {}
        self._generation += 1
        self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            time.sleep(settings.STATE_RATE_LIMIT_SYNC_SECS)
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - Redis is down: each process counts on its own
                _warn_unavailable()


shared_counts = SharedCounts()


@functools.cache
def _add_script():
    """The counting script, registered once for the process."""
    return _backend()._cache.get_client(write=True).register_script(_ADD_SCRIPT)  # type: ignore[attr-defined]


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs) -> None:
    if setting == "CACHES":
        _backend.cache_clear()
        _add_script.cache_clear()
    if setting in ("CACHES", "STATE_RATE_LIMITS"):
        shared_counts.reset()  # new limits (tests): counts start again


def _count(key: str, timeout: int) -> int:
    """Add one to the window counter `key` (created on first use) and return it."""
    backend = _backend()
    if isinstance(backend, RedisCache):
        return shared_counts.add(key, timeout)
    for _ in range(3):
        try:
            return backend.incr(key)
        except ValueError:  # not there yet (or it just expired)
            if backend.add(key, 1, timeout=timeout):
                return 1
    return 1


_warned_at = 0.0


def _warn_unavailable() -> None:
    global _warned_at
    if time.monotonic() - _warned_at > 60:
        _warned_at = time.monotonic()
        logger.warning("rate limits: the cache is unreachable; each process counts on its own")


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
        except Exception:  # noqa: BLE001 - the cache is down (local memory cannot be): serve
            _warn_unavailable()
            return True
        if count <= limit:
            return True
        self._wait = (window + 1) * seconds - now
        return False

    def wait(self) -> float | None:
        return self._wait
