"""The store's errors. Each maps to exactly one API error code and HTTP status."""

from typing import Any


class StateError(Exception):
    code = "validation_error"
    status = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidKey(StateError):
    code = "invalid_key"
    status = 400


class ValidationFailed(StateError):
    code = "validation_error"
    status = 400


class ValueTooLarge(StateError):
    code = "value_too_large"
    status = 413


class NotFound(StateError):
    code = "not_found"
    status = 404


class VersionConflict(StateError):
    code = "version_conflict"
    status = 409


class CasFailed(StateError):
    code = "cas_failed"
    status = 409


class NotANumber(StateError):
    code = "not_a_number"
    status = 409


class PermissionDenied(StateError):
    code = "permission_denied"
    status = 403


class Unavailable(StateError):
    code = "unavailable"
    status = 503


class EncryptionError(StateError):
    """A stored value the configured keys cannot open (a dropped or wrong key): server-side."""

    code = "encryption_error"
    status = 500


class InvalidSnapshot(ValidationFailed):
    """A snapshot file that is corrupt, truncated, foreign or of a future format version."""
