"""Turn every error into the API envelope: {"success": false, "error": {code, message, details}}.

DRF views end here through `exception_handler`. Whatever Django itself answers under `/api/`
before or outside a view (no route, a body over `DATA_UPLOAD_MAX_MEMORY_SIZE`, a crash in
middleware) goes through `handler400/403/404/500` in `config/urls.py`, which call `api_error`.
"""

import logging
import math
import sys
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.settings import api_settings

from sessions_tracking import correlation
from state.exceptions import StateError, Unavailable, ValidationFailed, ValueTooLarge

logger = logging.getLogger("state.api")

_CODES: list[tuple[type[exceptions.APIException], str]] = [
    (exceptions.NotAuthenticated, "unauthenticated"),
    (exceptions.AuthenticationFailed, "unauthenticated"),
    (exceptions.PermissionDenied, "permission_denied"),
    (exceptions.NotFound, "not_found"),
    (exceptions.ValidationError, "validation_error"),
    (exceptions.ParseError, "validation_error"),
    (exceptions.Throttled, "rate_limited"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
]

API_PREFIX = "/api/"


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message, "details": details or {}}}


def state_error_details(exc: StateError) -> dict[str, Any]:
    """Return the details of a StateError; a validation error always names its fields."""
    details = dict(exc.details)
    if exc.code == ValidationFailed.code:
        field = details.pop("field", None) or api_settings.NON_FIELD_ERRORS_KEY
        details.setdefault("fields", {field: [exc.message]})
    return details


def error_message(detail: Any) -> str:
    """Flatten DRF's nested error detail into one readable sentence."""
    if isinstance(detail, dict):
        return "; ".join(f"{field}: {error_message(value)}" for field, value in detail.items())
    if isinstance(detail, list):
        return " ".join(error_message(item) for item in detail if item)
    return str(detail)


def error_fields(detail: Any, name: str = "") -> dict[str, list[str]]:
    """Flatten DRF's nested error detail to {field path: [messages]} (`operations.3.key`)."""
    if isinstance(detail, dict):
        fields: dict[str, list[str]] = {}
        for field, value in detail.items():
            fields.update(error_fields(value, f"{name}.{field}" if name else str(field)))
        return fields
    if isinstance(detail, list) and any(isinstance(item, dict | list) for item in detail):
        fields = {}
        for index, value in enumerate(detail):
            fields.update(error_fields(value, f"{name}.{index}" if name else str(index)))
        return fields
    messages = [str(item) for item in detail] if isinstance(detail, list) else [str(detail)]
    return {name or api_settings.NON_FIELD_ERRORS_KEY: messages} if messages else {}


def _internal_error(exc: BaseException | None) -> tuple[dict[str, Any], int]:
    """Log an unexpected error with the request's correlation id; return its envelope."""
    correlation_id = correlation.get()
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else sys.exc_info()
    logger.error("internal error, correlation id %s", correlation_id, exc_info=exc_info)
    details = {"correlation_id": correlation_id} if correlation_id else {}
    message = "An unexpected error occurred; it has been logged."
    return error_body("internal_error", message, details), 500


def _translate(exc: Exception) -> Exception:
    """Map the framework's own exceptions onto ours or DRF's."""
    if isinstance(exc, OperationalError | InterfaceError):
        return Unavailable("The database is unavailable; try again.")
    if isinstance(exc, RequestDataTooBig):
        from django.conf import settings

        limit = settings.STATE_MAX_REQUEST_BYTES
        return ValueTooLarge(f"The request body exceeds {limit} bytes.", limit=limit)
    if isinstance(exc, Http404):
        return exceptions.NotFound()
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied()
    return exc


def envelope_of(exc: Exception) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Return (body, status, headers) of the envelope answering `exc`."""
    exc = _translate(exc)
    if isinstance(exc, StateError):
        return error_body(exc.code, exc.message, state_error_details(exc)), exc.status, {}
    if not isinstance(exc, exceptions.APIException):
        body, status_code = _internal_error(exc)
        return body, status_code, {}
    code = getattr(exc, "default_code", "error")
    for cls, name in _CODES:
        if isinstance(exc, cls):
            code = name
            break
    details: dict[str, Any] = {}
    if code == "validation_error":
        details = {"fields": error_fields(exc.detail)}
    headers = {}
    if auth_header := getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = auth_header
    if (wait := getattr(exc, "wait", None)) is not None:
        headers["Retry-After"] = str(math.ceil(wait))  # whole seconds, never 0 too early
        details["retry_after"] = math.ceil(wait)
    return error_body(code, error_message(exc.detail), details), exc.status_code, headers


def exception_handler(exc: Exception, context: dict) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception a view raises becomes an envelope."""
    body, status_code, headers = envelope_of(exc)
    return Response(body, status=status_code, headers=headers)


def is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def api_error(request: HttpRequest, exc: Exception | None, *, status_code: int) -> JsonResponse:
    """Answer a request under /api/ that Django itself failed, in the envelope."""
    if status_code == 500:
        body, status_code = _internal_error(exc)
        return JsonResponse(body, status=status_code)
    if status_code == 404:
        exc = exceptions.NotFound(f"Nothing at {request.path}.")
    elif status_code == 400 and not isinstance(_translate(exc), StateError):
        exc = exceptions.ParseError(f"Bad request: {exc}")
    elif status_code == 403:
        exc = exceptions.PermissionDenied()
    body, status_code, headers = envelope_of(exc)
    return JsonResponse(body, status=status_code, headers=headers)


@csrf_exempt
def not_found(request: HttpRequest) -> JsonResponse:
    """The view behind every path under /api/ that no route matches."""
    return api_error(request, None, status_code=404)
