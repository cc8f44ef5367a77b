"""Domain errors raised by services in every app. The API's exception handler maps each class to one HTTP status,
so status codes are decided in one place; messages are written for the user who has to act on them."""


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(DomainError):
    """The request itself is malformed (400)."""

    code = "invalid"


class PermissionDenied(DomainError):
    """The user is authenticated but may not do this (403), e.g. separation of duties."""

    code = "forbidden"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    """The request clashes with current state: duplicate name, sealed version, decided request (409)."""

    code = "conflict"


class TooLarge(DomainError):
    code = "too_large"


class Unprocessable(DomainError):
    """The content was received but cannot be accepted: pickle weights, corrupt headers, bad JSONL (422)."""

    code = "unprocessable"


class StorageUnavailable(DomainError):
    """Object storage did not answer; nothing was recorded (503)."""

    code = "storage_unavailable"
