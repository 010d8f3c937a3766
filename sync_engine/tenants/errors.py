"""Errors of source management. The admin API alone turns them into HTTP responses.

SourceError
├── InvalidInput      400: a field is missing or wrong (names the field)
├── UnknownSource     404: no source with that id
└── DuplicateName     409: another source already has that name
"""

from __future__ import annotations


class SourceError(Exception):
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(SourceError):
    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownSource(SourceError):
    code = "not_found"


class DuplicateName(SourceError):
    code = "duplicate_name"

    def __init__(self, message: str, source_id: str | None = None) -> None:
        super().__init__(message)
        self.source_id = source_id
