"""One domain-error tree and one mapping to HTTP: every error body is
``{"code", "message", "field"}`` with a stable machine code."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from api.schemas import ErrorBody


class ApiError(Exception):
    status: int = 400
    code: str = "invalid_request"
    #: extra response headers (e.g. Retry-After)
    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def body(self) -> ErrorBody:
        return ErrorBody(code=self.code, message=self.message, field=self.field)


class InvalidRequestError(ApiError):
    status = 400
    code = "invalid_request"


class UnauthorizedError(ApiError):
    status = 401
    code = "unauthorized"
    #: RFC 9110: a 401 names the scheme the client should use
    headers = MappingProxyType({"WWW-Authenticate": 'Bearer realm="sendwise"'})


class ForbiddenError(ApiError):
    """Authenticated, but the key's role does not allow the endpoint."""

    status = 403
    code = "forbidden"


class NotFoundError(ApiError):
    status = 404
    code = "not_found"


class ConflictError(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLargeError(ApiError):
    status = 413
    code = "payload_too_large"


class RateLimitedError(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, field="Authorization")
        self.headers = {"Retry-After": str(retry_after)}


class UnavailableError(ApiError):
    """Only for endpoints with no safe fallback (reads of state, policy writes)."""

    status = 503
    code = "store_unavailable"


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]+)`")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`")


def field_from_msgspec(message: str) -> tuple[str, str | None]:
    """Split msgspec's "Expected `int`, got `str` - at `$.priority`" into (message, field).
    Paths come out as ``channels[1]``, ``offer.id``."""
    match = _AT.search(message)
    path = match.group("path").lstrip(".") if match else ""
    text = message[: match.start()] if match else message
    for pattern in (_UNKNOWN, _MISSING):
        named = pattern.search(text)
        if named:
            path = f"{path}.{named.group('name')}" if path else named.group("name")
    return text, path or None
