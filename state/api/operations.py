"""What each API action is called in metrics and which rate-limit class it counts against."""

import time
from typing import Any

from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from state import metrics

from .throttling import OperationRateThrottle

# (viewset basename, action, HTTP method or "*") -> (operation name, rate-limit class)
OPERATIONS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("state", "retrieve", "*"): ("get", "read"),
    ("state", "update", "*"): ("set", "write"),
    ("state", "destroy", "*"): ("delete", "write"),
    ("state", "metadata", "GET"): ("metadata_get", "read"),
    ("state", "metadata", "PUT"): ("metadata_set", "write"),
    ("state", "history", "*"): ("history", "read"),
    ("state", "keys", "*"): ("keys", "read"),
    ("state", "entries", "*"): ("entries", "read"),
    ("state", "mget", "*"): ("mget", "read"),
    ("state", "stats", "*"): ("stats", "read"),
    ("state", "cas", "*"): ("cas", "write"),
    ("state", "incr", "*"): ("incr", "write"),
    ("state", "bulk", "*"): ("bulk", "bulk"),
    ("snapshot", "create", "*"): ("snapshot_create", "snapshot"),
    ("snapshot", "list", "*"): ("snapshot_list", "snapshot"),
    ("snapshot", "retrieve", "*"): ("snapshot_get", "snapshot"),
    ("snapshot", "destroy", "*"): ("snapshot_delete", "snapshot"),
    ("snapshot", "download", "*"): ("snapshot_download", "snapshot"),
    ("snapshot", "restore", "*"): ("snapshot_restore", "snapshot"),
}
UNKNOWN = ("unknown", "read")


def operation_of(view: Any, method: str) -> tuple[str, str]:
    """Return (operation name, rate-limit class) of the action `view` is serving."""
    basename, action = getattr(view, "basename", None), getattr(view, "action", None)
    return OPERATIONS.get(
        (basename, action, method), OPERATIONS.get((basename, action, "*"), UNKNOWN)
    )


def outcome_of(response: Response) -> str:
    """Return "ok", or the envelope's error code."""
    if response.status_code < 400:
        return "ok"
    data = getattr(response, "data", None)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("code", "error"))
    return "error"


class InstrumentedViewSet(viewsets.ViewSet):
    """A ViewSet that names each request's operation, rate-limits it, counts it and its latency."""

    throttle_classes = [OperationRateThrottle]  # a no-op for classes without a rate
    operation: tuple[str, str] = UNKNOWN

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.operation = operation_of(self, request.method)
        super().initial(request, *args, **kwargs)

    def dispatch(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        started = time.perf_counter()
        outcome = "error"  # an exception DRF does not handle becomes a 500
        try:
            response = super().dispatch(request, *args, **kwargs)
            outcome = outcome_of(response)
            return response
        finally:
            operation, _ = operation_of(self, request.method)  # also before initial() ran
            metrics.observe_operation(operation, outcome, time.perf_counter() - started)
