"""The correlation id of the request (or WebSocket connection) being served.

Set by the tracking middleware for every request; read by views, error responses and log
records. A context variable, so it follows the request across threads and event-loop hops
(asgiref copies the context into `sync_to_async` / `database_sync_to_async` calls).
"""

import re
import uuid
from contextvars import ContextVar

# A valid incoming X-Correlation-ID / X-Request-ID: letters, digits and ._- (at most 128).
VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

current: ContextVar[str | None] = ContextVar("statehub_correlation_id", default=None)


def get() -> str | None:
    """Return the correlation id of the request being served, if any."""
    return current.get()


def accept(candidate: str | None) -> str:
    """Return `candidate` if it is a valid correlation id, else a new UUID."""
    if candidate is not None and VALID_ID.fullmatch(candidate):
        return candidate
    return str(uuid.uuid4())
