"""Schemathesis hooks (SCHEMATHESIS_HOOKS=fuzz.hooks): a refused request changes nothing.

The store revision goes up by one for every change, so reading it from the server's database
right before and right after a call (schemathesis runs one call at a time here) tells whether
that call changed anything.
"""

import atexit
import json
import os
from collections import Counter

import django
import schemathesis

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from django.db import close_old_connections  # noqa: E402

from state import selectors  # noqa: E402

_before: dict[int, int] = {}
# Every response by status class, written where the driver reads it (STATEHUB_FUZZ_STATS).
_statuses: Counter[str] = Counter()


@atexit.register
def _write_stats() -> None:
    if path := os.environ.get("STATEHUB_FUZZ_STATS"):
        with open(path, "w") as stats:
            json.dump(dict(_statuses), stats)


def _revision() -> int:
    close_old_connections()
    return selectors.store_revision()


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    _before[id(case)] = _revision()


@schemathesis.hook
def after_call(ctx, case, response):
    _statuses["requests"] += 1
    _statuses[f"{response.status_code // 100}xx"] += 1


@schemathesis.check
def rejected_request_changes_nothing(ctx, response, case):
    """A response of 400 or more must leave the store revision where it was."""
    before = _before.pop(id(case), None)
    if before is None or response.status_code < 400:
        return None
    after = _revision()
    if after != before:
        raise AssertionError(
            f"{response.status_code} response, yet the store revision moved {before} -> {after}"
        )
    return None
