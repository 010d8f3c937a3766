"""The engine's errors. Domain code raises these; `http/errors.py` alone turns them into responses.

EngineError
├── InvalidRequest        400, {"message": "Invalid request", "errors": {field: [msg]}}
├── BadBody               400/413, {"error": msg, "details"?: ...} (a POST body, as Electric)
├── Unauthorized          401
├── ShapeGone             409 must-refetch (handle unknown, rotated, or of another shape)
├── ServiceUnavailable    503 with Retry-After (database unreachable, limits, not ready)
└── NotFound              404
"""

from __future__ import annotations


class EngineError(Exception):
    pass


class InvalidRequest(EngineError):
    def __init__(self, errors: dict[str, object], message: str = "Invalid request") -> None:
        super().__init__(message)
        self.errors = errors
        self.message = message


class BadBody(EngineError):
    """A POST body that cannot be read as a JSON object (or is too large: status 413)."""

    def __init__(self, message: str, status: int = 400, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details


class Unauthorized(EngineError):
    pass


class NotFound(EngineError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ShapeGone(EngineError):
    """The requested handle is not (or no longer) the shape for this definition."""

    def __init__(self, current_handle: str | None) -> None:
        super().__init__("must-refetch")
        self.current_handle = current_handle


class ServiceUnavailable(EngineError):
    def __init__(self, message: str, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.code = code
