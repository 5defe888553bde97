"""Strict request-body decoding: one typed msgspec decoder per body type, errors as 4xx.

Litestar converts bodies with ``strict=False``, which quietly turns ``"priority": "5"`` into
5, ``"dry_run": "true"`` into True and ``"not_before": 0`` into 1970. A decision service
must not guess what a caller meant, so handlers read the raw bytes (after authentication)
and decode them here with msgspec's strict rules. Every failure is an ``InvalidRequestError``
naming the field; nothing a body contains (invalid UTF-8, nesting 1,000 deep, an empty body)
reaches the generic 500 handler.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec
from litestar import Request
from litestar.datastructures import State

from api.errors import InvalidRequestError, field_from_msgspec

T = TypeVar("T")


class BodyDecoder(Generic[T]):
    """Decodes one body type strictly; create once per type (msgspec decoders are reusable
    and cheaper than ``msgspec.json.decode(..., type=...)`` per call)."""

    def __init__(self, kind: type[T]) -> None:
        self.kind = kind
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(kind)

    def decode(self, raw: bytes) -> T:
        if not raw.strip():
            raise InvalidRequestError("the request body is empty; a JSON object is expected",
                                      code="invalid_json")
        try:
            return self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            message, field = field_from_msgspec(str(exc))
            raise InvalidRequestError(message, field=field, code="invalid_field") from exc
        except msgspec.DecodeError as exc:
            raise InvalidRequestError(f"the body is not valid JSON: {exc}",
                                      code="invalid_json") from exc
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(
                f"the body is not valid UTF-8 (byte {exc.start}): JSON text must be UTF-8",
                code="invalid_json") from exc
        except RecursionError as exc:
            raise InvalidRequestError("the body is nested too deeply", code="invalid_json") from exc

    async def read(self, request: Request[Any, Any, State]) -> T:
        """The request's body, decoded. Litestar enforces the body size limit while reading
        (413 for a larger body, with or without Content-Length)."""
        return self.decode(await request.body())
