"""Hot keys: approximate counts of the reads and writes of each key, by time window.

The API calls `record()` for every key a request reads or writes. Counting is sampled (1 in
STATE_HOT_KEYS_SAMPLE, each sample counting N, so the estimate is unbiased) into a small
per-process dict: one dict increment under a lock, nothing else on the request path.

Windows are STATE_HOT_KEYS_WINDOW_SECS long; `top()` ranks by the current window's count plus
the previous window's, scaled down by how far the current window has run (a sliding window,
linearly decayed). Each window keeps at most STATE_HOT_KEYS_CAPACITY keys: when it holds more,
the lowest-ranked are dropped (they start again from zero if they come back).

With REDIS_URL, a background thread in each process adds its counts to a sorted set a window
(one script call: ZINCRBY each key, then trim the set to the capacity) every
STATE_HOT_KEYS_FLUSH_SECS, so every process and `/stats` on any of them sees the same
ranking. A request never waits for Redis; while Redis is down the counts of that time are
dropped.

Error: with N = 1 (the default) every access is counted, each in the window it happened in,
and the count of a key that stayed within the capacity during its window is exact (less at
most one flush interval of other processes' counts, not yet in Redis). With N > 1 a count c
is an estimate with a standard deviation of about sqrt(c * N). Keys near the capacity cut-off
may be undercounted (a dropped key starts again from zero).
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

logger = logging.getLogger(__name__)

REDIS_PREFIX = "statehub:hot_keys:"


@dataclass(frozen=True, slots=True)
class HotKey:
    key: str
    accesses: int


_lock = threading.Lock()
_pending: dict[int, dict[str, int]] = {}  # window -> counts not yet in Redis / in _windows
_windows: dict[int, dict[str, float]] = {}  # local mode: window index -> key -> count
_flusher: threading.Thread | None = None
_redis = None


def _window_secs() -> int:
    return max(1, settings.STATE_HOT_KEYS_WINDOW_SECS)


def _trim(counts: dict[str, float], capacity: int) -> None:
    if len(counts) > 2 * capacity:
        keep = sorted(counts.items(), key=lambda item: item[1], reverse=True)[:capacity]
        counts.clear()
        counts.update(keep)


def record(*keys: str) -> None:
    """Count one access to each of `keys` (sampled)."""
    sample = settings.STATE_HOT_KEYS_SAMPLE
    if sample > 1 and random.random() * sample >= 1:
        return
    weight = max(sample, 1)
    window = int(time.time() // _window_secs())
    with _lock:
        pending = _pending.setdefault(window, {})
        for key in keys:
            pending[key] = pending.get(key, 0) + weight
        if settings.REDIS_URL:
            _start_flusher()
        else:
            _fold_locally()


def _fold_locally() -> None:
    for window, pending in _pending.items():
        counts = _windows.setdefault(window, {})
        for key, count in pending.items():
            counts[key] = counts.get(key, 0) + count
        _trim(counts, settings.STATE_HOT_KEYS_CAPACITY)
    _pending.clear()
    current = int(time.time() // _window_secs())
    for old in [w for w in _windows if w < current - 1]:
        del _windows[old]


# --- Redis ------------------------------------------------------------------------------------


def _client():
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1
        )
    return _redis


# Adds a flush's counts to one window's sorted set, gives it its expiry and trims it to the
# capacity, in one command: a flush after a bulk holds a thousand keys, and packing a ZINCRBY
# command for each (in a pipeline) cost the process several times the CPU of one call with
# all of them as arguments (bench/run.py's CPU per bulk operation shows the sum).
_ADD_SCRIPT = """
for i = 3, #ARGV, 2 do redis.call('ZINCRBY', KEYS[1], ARGV[i + 1], ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
"""
_script = None


def _add(name: str, counts: dict[str, int], *, expire: int, capacity: int) -> None:
    global _script
    if _script is None:
        _script = _client().register_script(_ADD_SCRIPT)
    args: list[str | int] = [expire, capacity]
    for key, count in counts.items():
        args += (key, count)
    _script(keys=[name], args=args)


def _start_flusher() -> None:
    global _flusher
    if _flusher is None or not _flusher.is_alive():
        _flusher = threading.Thread(target=_flush_forever, name="hot_keys", daemon=True)
        _flusher.start()


def _flush_forever() -> None:
    failed_at = 0.0
    while True:
        time.sleep(settings.STATE_HOT_KEYS_FLUSH_SECS)
        try:
            flush()
        except Exception:  # noqa: BLE001 - counting must never hurt the service
            if time.monotonic() - failed_at > 60:
                logger.warning("hot keys: could not reach Redis; counts dropped meanwhile")
                failed_at = time.monotonic()


def flush() -> None:
    """Add this process's pending counts to the shared window in Redis."""
    with _lock:
        batches = dict(_pending)
        _pending.clear()
    if not batches:
        return
    secs = _window_secs()
    for window, batch in batches.items():
        _add(f"{REDIS_PREFIX}{window}", batch, expire=2 * secs + 60,
             capacity=settings.STATE_HOT_KEYS_CAPACITY)  # fmt: skip


# --- reading --------------------------------------------------------------------------------


def top(limit: int, *, can_read: Callable[[str], bool] | None = None) -> list[HotKey]:
    """Return the `limit` most accessed keys (that `can_read` allows), hottest first."""
    secs = _window_secs()
    now = time.time()
    window = int(now // secs)
    previous_weight = 1 - (now - window * secs) / secs
    if settings.REDIS_URL:
        try:
            flush()
            names = {f"{REDIS_PREFIX}{window}": 1, f"{REDIS_PREFIX}{window - 1}": previous_weight}
            rows = _client().zunion(names, withscores=True)
        except Exception:  # noqa: BLE001 - Redis down: /stats still answers, without hot keys
            logger.warning("hot keys: Redis is unreachable", exc_info=True)
            return []
        scores = {key.decode(): score for key, score in rows}
    else:
        with _lock:
            _fold_locally()
            scores = dict(_windows.get(window, {}))
            for key, count in _windows.get(window - 1, {}).items():
                scores[key] = scores.get(key, 0) + count * previous_weight
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    hot = []
    for key, score in ranked:
        if len(hot) == limit:
            break
        if round(score) > 0 and (can_read is None or can_read(key)):
            hot.append(HotKey(key=key, accesses=round(score)))
    return hot


def reset() -> None:
    """Forget every count (tests, and `manage.py` tools)."""
    with _lock:
        _pending.clear()
        _windows.clear()
    if settings.REDIS_URL:
        client = _client()
        for name in client.scan_iter(match=f"{REDIS_PREFIX}*"):
            client.delete(name)
