"""The client's errors: one class per API error code, each carrying that code's details."""

from typing import Any


class StatehubError(Exception):
    """Anything the client raises on purpose."""

    # The `statehub` command's exit status for this error (2 is argparse's usage error).
    exit_code = 1


class TransportError(StatehubError):
    """The server could not be reached, or the connection broke before an answer."""

    exit_code = 17


class ProtocolError(StatehubError):
    """The server answered something that is not the documented API (a proxy's error page...)."""

    exit_code = 1


class ApiError(StatehubError):
    """An error envelope from the API: `{"code", "message", "details"}` and its HTTP status."""

    code = "error"

    def __init__(
        self, message: str, *, status: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Unauthenticated(ApiError):
    code = "unauthenticated"
    exit_code = 4


class PermissionDenied(ApiError):
    code = "permission_denied"
    exit_code = 5


class NotFound(ApiError):
    code = "not_found"
    exit_code = 3


class MethodNotAllowed(ApiError):
    code = "method_not_allowed"
    exit_code = 12


class UnsupportedMediaType(ApiError):
    code = "unsupported_media_type"
    exit_code = 13


class InvalidKey(ApiError):
    code = "invalid_key"
    exit_code = 6


class ValidationError(ApiError):
    code = "validation_error"
    exit_code = 7

    @property
    def fields(self) -> dict[str, list[str]]:
        """The refused fields and why: `{name: [messages]}`."""
        if "fields" in self.details:
            return self.details["fields"]
        # Servers before the strict envelope named one field as `details.field`.
        field = self.details.get("field")
        return {field: [self.message]} if isinstance(field, str) else {}


class ValueTooLarge(ApiError):
    code = "value_too_large"
    exit_code = 8


class VersionConflict(ApiError):
    code = "version_conflict"
    exit_code = 9

    @property
    def current_version(self) -> int | None:
        """The key's version now (0: it does not exist)."""
        return self.details.get("current_version")


class CasFailed(ApiError):
    code = "cas_failed"
    exit_code = 10

    @property
    def current(self) -> Any:
        """The key's value now (None: it does not exist)."""
        return self.details.get("current")

    @property
    def version(self) -> int | None:
        return self.details.get("version")


class NotANumber(ApiError):
    code = "not_a_number"
    exit_code = 11


class RateLimited(ApiError):
    code = "rate_limited"
    exit_code = 14

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before trying again, as the server said."""
        return self.details.get("retry_after")


class Unavailable(ApiError):
    code = "unavailable"
    exit_code = 15


class InternalError(ApiError):
    code = "internal_error"
    exit_code = 16


ERRORS: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        Unauthenticated,
        PermissionDenied,
        NotFound,
        MethodNotAllowed,
        UnsupportedMediaType,
        InvalidKey,
        ValidationError,
        ValueTooLarge,
        VersionConflict,
        CasFailed,
        NotANumber,
        RateLimited,
        Unavailable,
        InternalError,
    )
}


def api_error(code: str, message: str, *, status: int | None = None, details=None) -> ApiError:
    """Return the exception for an error code (an `ApiError` for a code this client predates)."""
    cls = ERRORS.get(code)
    if cls is None:
        error = ApiError(message, status=status, details=details)
        error.code = code
        return error
    return cls(message, status=status, details=details)


class ResyncRequired(StatehubError):
    """The watch cannot continue from where it was: list again, then watch from that listing.

    `reason` is `"state_reset"` (a snapshot was restored at `revision`) or
    `"revision_compacted"` (the events after the last revision seen are gone from the log;
    `oldest_revision` is the oldest still kept). Either way: call `entries()` for a fresh
    copy and `watch(..., since_revision=<the listing's revision>)` — `Mirror` does this.
    """

    exit_code = 18

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        revision: int | None = None,
        snapshot_id: int | None = None,
        oldest_revision: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.revision = revision
        self.snapshot_id = snapshot_id
        self.oldest_revision = oldest_revision
